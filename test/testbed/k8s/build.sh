#!/usr/bin/env bash
# Builds the testbed's kube-apiserver and kubeadm from the k8s.io/kubernetes Go module
# (pinned in ./go.mod) into ${ZDT_CACHE_DIR:-$HOME/.cache/zdt-agent}/bin/.
# Needs only Go (>= the go line of go.mod) and a Go module proxy; downloads no binaries.
# Skips the build when both binaries exist and bin/.k8s-version matches the pinned version.
#
#   test/testbed/k8s/build.sh            # build if needed; prints the bin dir last
#   ZDT_REBUILD=1 test/testbed/k8s/build.sh   # force a rebuild
#
# See README.md next to this file (first build: about 6-8 minutes on 2 cores).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_dir="${ZDT_CACHE_DIR:-${HOME:?HOME or ZDT_CACHE_DIR must be set}/.cache/zdt-agent}"
bin_dir="${cache_dir}/bin"
stamp="${bin_dir}/.k8s-version"
binaries=(kube-apiserver kubeadm)
label=testbed/k8s
what="kube-apiserver and kubeadm"
# shellcheck source=SCRIPTDIR/../go-build.sh
source "${here}/../go-build.sh"

command -v go >/dev/null 2>&1 || die "go is not on PATH (install Go, see README.md)"

# The pinned release: the single source of truth is the require line in go.mod.
version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2; exit }' "${here}/go.mod")"
[[ "${version}" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || die "cannot read the k8s.io/kubernetes version from ${here}/go.mod"
k8s_major=1
k8s_minor="${BASH_REMATCH[1]}"

gobuild_skip_if_current
gobuild_env

# Version stamping as in upstream hack/lib/version.sh: component-base/version is what
# `kubeadm version`, the apiserver's /version and kubeadm's version checks read;
# client-go/pkg/version is set too, as upstream does.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=${version}"
  ldflags+=" -X ${pkg}.gitMajor=${k8s_major}"
  ldflags+=" -X ${pkg}.gitMinor=${k8s_minor}"
  ldflags+=" -X ${pkg}.gitTreeState=clean"
  ldflags+=" -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done

log "$(go version)"
log "building kube-apiserver and kubeadm ${version} into ${bin_dir}"
log "GOMODCACHE=${GOMODCACHE} GOCACHE=${GOCACHE}"
log "first build: about 6-8 minutes on 2 cores; later builds reuse GOCACHE (seconds)"

cd "${here}"
gobuild_compile "${ldflags}"

"${bin_dir}/kubeadm" version -o short >&2 || die "built kubeadm does not run"
log "done in $(( SECONDS - start ))s: ${bin_dir}/{$(IFS=,; echo "${binaries[*]}")}"
echo "${bin_dir}"
