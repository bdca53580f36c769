#!/usr/bin/env bash
# Builds MinIO (a real S3 server that checks x-amz-checksum-sha256 on PutObject and
# UploadPart, which moto does not) from the Go module proxy into
# ${ZDT_CACHE_DIR:-$HOME/.cache/zdt-agent}/bin/minio/minio. Needs only Go and a Go module
# proxy; downloads no binaries. Skips the build when the binary exists and .version matches.
#
#   test/testbed/minio/build.sh               # build if needed; prints the bin dir last
#   ZDT_REBUILD=1 test/testbed/minio/build.sh # force a rebuild
#
# Why `go install module@version` and not a wrapper module like etcd36/: MinIO's main package
# is the module root (it cannot be imported), and its go.mod has no replace directives, so
# `go install` builds it with exactly the dependency versions MinIO's go.sum pins.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_dir="${ZDT_CACHE_DIR:-${HOME:?HOME or ZDT_CACHE_DIR must be set}/.cache/zdt-agent}"
bin_dir="${cache_dir}/bin/minio"
stamp="${bin_dir}/.version"
binaries=(minio)
label=testbed/minio
what="minio"
# The pin: a pseudo-version of github.com/minio/minio (the module proxy serves no tags of it
# under semantic import rules, so releases are pseudo-versions).
version="v0.0.0-20260212201848-7aac2a2c5b7c"
# shellcheck source=SCRIPTDIR/../go-build.sh
source "${here}/../go-build.sh"

command -v go >/dev/null 2>&1 || die "go is not on PATH (install Go, see ../k8s/README.md)"

gobuild_skip_if_current
gobuild_env
# go install module@version ignores the surrounding module; GOFLAGS=-mod=mod is for go.mod builds.
export GOFLAGS="-buildvcs=false"

log "$(go version)"
log "building ${what} ${version} into ${bin_dir}"
log "first build: about 2.5 minutes on 2 cores with a warm Go build cache, longer cold"
start=${SECONDS}
tmp="$(mktemp -d "${bin_dir}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
GOBIN="${tmp}" go install -trimpath -ldflags "-s -w" "github.com/minio/minio@${version}"
gobuild_install "${tmp}"
"${bin_dir}/minio" --version >&2 || die "built minio does not run"
log "done in $(( SECONDS - start ))s: ${bin_dir}/minio"
echo "${bin_dir}"
