#!/usr/bin/env bash
# Installs the servers and tools the integration tests run against (DESIGN.md, "The testbed")
# on a fresh Debian machine, as root. Idempotent: installs only what is missing, so a run on a
# ready machine takes a second or two. Called by `make testbed-deps` and CI.
#
#   Debian packages   etcd 3.4, sshd, qemu-user-static, shellcheck, mkfs/blkid/losetup, …
#                     prometheus-node-exporter and prometheus (promtool), without starting their services
#   moto_server       pip install 'moto[server]' (the fidelity proxy was measured on 5.2.1)
#   AEMM              amazon-ec2-metadata-mock, go install into $ZDT_CACHE_DIR/bin
#   k8s, etcd 3.6     k8s/build.sh (kube-apiserver, kubeadm) and etcd36/build.sh (etcd, etcdctl,
#                     etcdutl 3.6, beside Debian's 3.4) next to this file, when present
#   MinIO             minio/build.sh (go install of a pinned MinIO: the S3 server that checks checksums)
#   sysroot           arm64-sysroot.sh next to this file, when present
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_dir="${ZDT_CACHE_DIR:-${HOME:?HOME or ZDT_CACHE_DIR must be set}/.cache/zdt-agent}"
bin_dir="${cache_dir}/bin"
moto_version=5.2.1
aemm_module=github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock
aemm_version=v1.13.0

log() { printf '[testbed %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

apt_updated=
apt_install() {
  [[ $(id -u) == 0 ]] || die "installing $* needs root (apt-get)"
  if [[ -z ${apt_updated} ]]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Go-built servers, in the background ----------------------------------------------------
# The Go builds (kube-apiserver and kubeadm, then etcd 3.6, which reuses many of their
# packages; MinIO beside them) need only Go and the module proxy, so they run while apt and
# pip work below: their module downloads and apt's overlap instead of adding up (on a fresh
# machine this saves minutes). Each chain logs to a file that is shown when it fails.
go_build_pids=()
go_build_logs=()
go_build_chain() { # LOG SCRIPT...: runs the scripts in order, stopping at the first failure
  local log_file=$1 script
  shift
  ( for script in "$@"; do [[ ! -f ${script} ]] || bash "${script}" >/dev/null || exit 1; done ) >"${log_file}" 2>&1 &
  go_build_pids+=($!)
  go_build_logs+=("${log_file}")
}
go_builds_wait() {
  local i failed=0
  for i in "${!go_build_pids[@]}"; do
    if wait "${go_build_pids[$i]}"; then
      grep -h 'done in\|up to date' "${go_build_logs[$i]}" >&2 || true
    else
      log "error: a Go build failed; its log (${go_build_logs[$i]}) ends with:"
      tail -n 30 "${go_build_logs[$i]}" >&2
      failed=1
    fi
    rm -f "${go_build_logs[$i]}"
  done
  ((failed == 0)) || die "Go-built test servers are missing (see above)"
}
go_build_chain "$(mktemp)" "${here}/k8s/build.sh" "${here}/etcd36/build.sh"
go_build_chain "$(mktemp)" "${here}/minio/build.sh"

# --- Debian packages ----------------------------------------------------------------------
# openrc: openrc-run, rc-service and supervise-daemon for the service tests (test/e2e/openrc.test.ts),
# run in a private mount namespace; its postinst only lists the machine's services in
# /etc/runlevels and starts or stops none of them (PID 1 stays as it is).
packages=(etcd-server etcd-client openssh-server openssh-client qemu-user-static shellcheck
  e2fsprogs xfsprogs util-linux kmod time openrc)
missing=()
for p in "${packages[@]}"; do
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  apt_install "${missing[@]}"
fi

# --- Prometheus tools ----------------------------------------------------------------------
# prometheus-node-exporter (its textfile collector reads the agent's metrics files) and
# prometheus (for promtool). Both packages enable and start a service in their postinst; the
# tests start node_exporter themselves on a loopback port, so the installation runs with a
# policy-rc.d that denies every service start (invoke-rc.d and deb-systemd-invoke ask it),
# unless the machine already has one, which is then left as it is.
prom_missing=()
for p in prometheus-node-exporter prometheus; do
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || prom_missing+=("$p")
done
if ((${#prom_missing[@]})); then
  log "installing Debian packages (services not started): ${prom_missing[*]}"
  policy=/usr/sbin/policy-rc.d
  if [[ -e ${policy} ]]; then
    apt_install "${prom_missing[@]}"
  else
    printf '#!/bin/sh\n# zdt-agent testbed: no service starts while packages install\nexit 101\n' >"${policy}"
    chmod 755 "${policy}"
    trap 'rm -f "${policy}"' EXIT
    apt_install "${prom_missing[@]}"
    rm -f "${policy}"
    trap - EXIT
  fi
fi

# --- moto ---------------------------------------------------------------------------------
if ! command -v moto_server >/dev/null 2>&1; then
  log "installing moto[server]==${moto_version}"
  command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || apt_install python3-pip
  pip=$(command -v pip3 || command -v pip)
  # Debian's own Python refuses system-wide pip installs (PEP 668) unless told otherwise.
  "$pip" install --quiet "moto[server]==${moto_version}" 2>/dev/null ||
    "$pip" install --quiet --break-system-packages "moto[server]==${moto_version}"
  hash -r
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
  command -v moto_server >/dev/null 2>&1 || die "moto_server is not on PATH after pip install"
fi

# --- amazon-ec2-metadata-mock ---------------------------------------------------------------
if [[ ! -x ${bin_dir}/ec2-metadata-mock ]]; then
  go=$(command -v go || echo /usr/local/go/bin/go)
  [[ -x ${go} ]] || die "Go is needed to build ec2-metadata-mock (Debian's golang-go is too old: AEMM needs Go >= 1.23)"
  log "building ec2-metadata-mock ${aemm_version} into ${bin_dir}"
  mkdir -p "${bin_dir}"
  GOBIN="${bin_dir}" "${go}" install "${aemm_module}@${aemm_version}"
fi

# --- parts other files own: wait for the Go builds started above ----------------------------
go_builds_wait
[[ ! -f ${here}/arm64-sysroot.sh ]] || bash "${here}/arm64-sysroot.sh"

log "testbed ready (moto_server, ${bin_dir}/ec2-metadata-mock, etcd $(etcd --version | awk 'NR == 1 { print $3 }') and $("${bin_dir}/etcd-3.6/etcd" --version 2>/dev/null | awk 'NR == 1 { print $3 }'))"
