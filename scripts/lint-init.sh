#!/usr/bin/env bash
# Lints what the init systems run (`make lint`; test/unit/packaging.test.ts runs it too):
#   - shellcheck on the OpenRC scripts, the periodic entries, the ssh sync loop, the
#     pre-install script and the APKBUILD, all as POSIX sh (busybox ash runs them on Alpine);
#   - systemd-analyze verify on units/, when systemd-analyze is installed.
# Exits non-zero on the first kind of problem found; prints what it skipped.
set -euo pipefail

cd "$(dirname "$0")/.."
status=0

if command -v shellcheck >/dev/null; then
  # openrc-run scripts: shellcheck does not know the #!/sbin/openrc-run shebang, so the shell
  # is given. SC2034: description, command_args and friends are read by openrc-run, not by
  # the script.
  shellcheck --shell=sh --exclude=SC2034 openrc/* || status=1
  shellcheck --shell=sh alpine/*.periodic alpine/*.sh alpine/*.pre-install || status=1
  # APKBUILD: abuild sources it and reads its variables (SC2034) and sets srcdir, pkgdir,
  # builddir and friends (SC2154).
  shellcheck --shell=sh --exclude=SC2034,SC2154 alpine/APKBUILD || status=1
else
  echo "lint-init: shellcheck not installed: OpenRC scripts and APKBUILD not checked (apt-get install shellcheck)" >&2
fi

if command -v systemd-analyze >/dev/null; then
  # verify insists that every ExecStart= command exists, and /usr/bin/zdt-agent is not
  # installed here: check copies of the units that point at a stand-in.
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  printf '#!/bin/sh\nexit 0\n' >"$work/zdt-agent"
  chmod 755 "$work/zdt-agent"
  for unit in units/*; do
    sed "s|/usr/bin/zdt-agent|$work/zdt-agent|g" "$unit" >"$work/$(basename "$unit")"
  done
  # --man=no: the units point at no man pages.
  if ! output="$(systemd-analyze verify --man=no "$work"/*.service "$work"/*.timer 2>&1)"; then
    status=1
  fi
  # verify also warns without failing (unknown keys, bad values); treat any output as a problem.
  if [[ -n "$output" ]]; then
    echo "$output" >&2
    status=1
  fi
else
  echo "lint-init: systemd-analyze not installed: units/ not checked" >&2
fi

exit "$status"
