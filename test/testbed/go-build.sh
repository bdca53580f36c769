# shellcheck shell=bash
# The caller sets the variables this file reads (see below).
# shellcheck disable=SC2154
# Sourced by k8s/build.sh and etcd36/build.sh: what every Go-built test server shares. The
# caller sets `label` (log prefix), `what` (for messages), `bin_dir`, `stamp` (a file holding
# the built version, written last), `version`, `binaries` (an array) and `cache_dir`, then calls:
#
#   gobuild_skip_if_current   exits 0, printing bin_dir, when the stamp matches `version` and
#                             every binary is there (unless ZDT_REBUILD is set); otherwise takes
#                             the build lock (a parallel caller waits, then finds them current)
#   gobuild_env               Go's environment for a build from go.mod/go.sum
#   gobuild_compile LDFLAGS   downloads the modules, builds every ./cmd/<binary> with LDFLAGS
#                             into a temporary directory, then gobuild_install; sets `start`
#   gobuild_install DIR       moves the binaries built into DIR to bin_dir, then writes the stamp

log() { printf '[%s %s] %s\n' "${label}" "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

gobuild_is_current() {
  [[ -f "${stamp}" && "$(cat "${stamp}")" == "${version}" ]] || return 1
  local b
  for b in "${binaries[@]}"; do [[ -x "${bin_dir}/${b}" ]] || return 1; done
}

gobuild_skip_if_current() {
  if [[ -z "${ZDT_REBUILD:-}" ]] && gobuild_is_current; then
    log "${what} ${version} are up to date in ${bin_dir}"
    echo "${bin_dir}"
    exit 0
  fi
  mkdir -p "${bin_dir}"
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>"${stamp}.lock"
  if ! flock -n 9; then
    log "another build holds ${stamp}.lock; waiting"
    flock 9
  fi
  if [[ -z "${ZDT_REBUILD:-}" ]] && gobuild_is_current; then
    log "${what} ${version} were built meanwhile in ${bin_dir}"
    echo "${bin_dir}"
    exit 0
  fi
}

# Modules from go.mod/go.sum (no vendor dir), the module and build caches at Go's defaults
# unless the caller set them, no VCS stamp (the modules live inside the project's git work
# tree), static binaries.
gobuild_env() {
  export GOFLAGS="-mod=mod -buildvcs=false"
  export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"
  [[ -n "${GOMODCACHE}" ]] || export GOMODCACHE="${cache_dir}/gomod"
  export GOCACHE="${GOCACHE:-$(go env GOCACHE)}"
  [[ -n "${GOCACHE}" && "${GOCACHE}" != off ]] || export GOCACHE="${cache_dir}/gobuild"
  export CGO_ENABLED="${CGO_ENABLED:-0}"
}

# Replace atomically, then write the stamp last: an interrupted build leaves no stamp.
gobuild_install() {
  local from=$1 b
  rm -f "${stamp}"
  for b in "${binaries[@]}"; do mv -f "${from}/${b}" "${bin_dir}/${b}"; done
  printf '%s\n' "${version}" > "${stamp}"
}

gobuild_compile() {
  local ldflags=$1 b
  start=${SECONDS}
  log "downloading modules"
  go mod download
  gobuild_tmp="$(mktemp -d "${bin_dir}/.build.XXXXXX")"
  trap 'rm -rf "${gobuild_tmp}"' EXIT
  for b in "${binaries[@]}"; do
    log "compiling ${b}"
    go build -trimpath -ldflags "${ldflags}" -o "${gobuild_tmp}/${b}" "./cmd/${b}"
    log "compiled ${b} ($(( SECONDS - start ))s so far)"
  done
  gobuild_install "${gobuild_tmp}"
}
