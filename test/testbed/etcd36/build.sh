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

log() { printf '[testbed/etcd36 %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not on PATH (install Go, see ../k8s/README.md)"

# The pinned release: the single source of truth is the server/v3 require line in go.mod.
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "${here}/go.mod")"
[[ "${etcd_version}" =~ ^v3\.6\.[0-9]+$ ]] || die "cannot read the go.etcd.io/etcd/server/v3 version from ${here}/go.mod"

is_current() {
  [[ -f "${stamp}" && "$(cat "${stamp}")" == "${etcd_version}" ]] || return 1
  local b
  for b in "${binaries[@]}"; do [[ -x "${bin_dir}/${b}" ]] || return 1; done
}

if [[ -z "${ZDT_REBUILD:-}" ]] && is_current; then
  log "etcd, etcdctl and etcdutl ${etcd_version} are up to date in ${bin_dir}"
  echo "${bin_dir}"
  exit 0
fi

mkdir -p "${bin_dir}"

# Serialize concurrent callers: the second waits, then finds the binaries current.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${bin_dir}/.build.lock"
  if ! flock -n 9; then
    log "another build holds ${bin_dir}/.build.lock; waiting"
    flock 9
  fi
  if [[ -z "${ZDT_REBUILD:-}" ]] && is_current; then
    log "etcd ${etcd_version} was built meanwhile in ${bin_dir}"
    echo "${bin_dir}"
    exit 0
  fi
fi

# As in ../k8s/build.sh: modules from go.mod/go.sum, Go's default caches unless set, no VCS
# stamp (the module lives inside the project's work tree), static binaries.
export GOFLAGS="-mod=mod -buildvcs=false"
export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"
[[ -n "${GOMODCACHE}" ]] || export GOMODCACHE="${cache_dir}/gomod"
export GOCACHE="${GOCACHE:-$(go env GOCACHE)}"
[[ -n "${GOCACHE}" && "${GOCACHE}" != off ]] || export GOCACHE="${cache_dir}/gobuild"
export CGO_ENABLED="${CGO_ENABLED:-0}"

log "$(go version)"
log "building etcd, etcdctl and etcdutl ${etcd_version} into ${bin_dir}"
log "first build: about 3 minutes on 2 cores; later builds reuse GOCACHE (seconds)"

cd "${here}"
start=${SECONDS}
log "downloading modules"
go mod download

tmp_dir="$(mktemp -d "${bin_dir}/.build.XXXXXX")"
trap 'rm -rf "${tmp_dir}"' EXIT

for b in "${binaries[@]}"; do
  log "compiling ${b}"
  go build -trimpath -ldflags "-s -w" -o "${tmp_dir}/${b}" "./cmd/${b}"
  log "compiled ${b} ($(( SECONDS - start ))s so far)"
done

# Replace atomically, then write the stamp last: an interrupted build leaves no stamp.
rm -f "${stamp}"
for b in "${binaries[@]}"; do
  mv -f "${tmp_dir}/${b}" "${bin_dir}/${b}"
done
printf '%s\n' "${etcd_version}" > "${stamp}"

"${bin_dir}/etcd" --version >&2 || die "built etcd does not run"
log "done in $(( SECONDS - start ))s: ${bin_dir}/{$(IFS=,; echo "${binaries[*]}")}"
echo "${bin_dir}"
