#!/usr/bin/env bash
# Builds etcd, etcdctl and etcdutl 3.6 (the release kubeadm 1.34 deploys, pinned in ./go.mod)
# from the Go module proxy into ${ZDT_CACHE_DIR:-$HOME/.cache/zdt-agent}/bin/etcd-3.6/, a
# directory of its own so that it never shadows Debian's etcd 3.4 in /usr/bin.
# Needs only Go (>= the go line of go.mod) and a Go module proxy; downloads no binaries.
# Skips the build when the three binaries exist and etcd-3.6/.version matches the pin.
#
#   test/testbed/etcd36/build.sh              # build if needed; prints the bin dir last
#   ZDT_REBUILD=1 test/testbed/etcd36/build.sh   # force a rebuild
#
# Why a wrapper module: etcd's own go.mod files replace their sibling modules with local
# paths (../api, ../server), so `go install go.etcd.io/etcd/...@v3.6.x` refuses them. This
# module requires the published server/v3, etcdctl/v3 and etcdutl/v3 and calls their mains
# (cmd/). See README.md next to this file.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_dir="${ZDT_CACHE_DIR:-${HOME:?HOME or ZDT_CACHE_DIR must be set}/.cache/zdt-agent}"
bin_dir="${cache_dir}/bin/etcd-3.6"
stamp="${bin_dir}/.version"
binaries=(etcd etcdctl etcdutl)
label=testbed/etcd36
what="etcd, etcdctl and etcdutl"
# shellcheck source=SCRIPTDIR/../go-build.sh
source "${here}/../go-build.sh"

command -v go >/dev/null 2>&1 || die "go is not on PATH (install Go, see ../k8s/README.md)"

# The pinned release: the single source of truth is the server/v3 require line in go.mod.
version="$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "${here}/go.mod")"
[[ "${version}" =~ ^v3\.6\.[0-9]+$ ]] || die "cannot read the go.etcd.io/etcd/server/v3 version from ${here}/go.mod"

gobuild_skip_if_current
gobuild_env

log "$(go version)"
log "building ${what} ${version} into ${bin_dir}"
log "first build: about 1.5 minutes on 2 cores after k8s/build.sh (they share packages); later builds reuse GOCACHE (seconds)"

cd "${here}"
gobuild_compile "-s -w"

"${bin_dir}/etcd" --version >&2 || die "built etcd does not run"
log "done in $(( SECONDS - start ))s: ${bin_dir}/{$(IFS=,; echo "${binaries[*]}")}"
echo "${bin_dir}"
