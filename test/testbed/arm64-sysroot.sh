#!/usr/bin/env bash
# A minimal arm64 root for running dist/zdt-agent-arm64 under user-mode QEMU:
#   qemu-aarch64-static -L "$sysroot" dist/zdt-agent-arm64 version
# It holds the dynamic loader and the three libraries node links against (libc6 with libm,
# libdl and libpthread; libstdc++6; libgcc-s1), unpacked from Debian's arm64 packages.
#
# Idempotent: exits at once when the sysroot is complete. Prints the sysroot path last.
# Needs root (dpkg --add-architecture, apt-get update) only the first time.
set -euo pipefail

cache_dir="${ZDT_CACHE_DIR:-$HOME/.cache/zdt-agent}"
sysroot="$cache_dir/arm64-sysroot"
packages=(libc6 libstdc++6 libgcc-s1)

complete() {
  [[ -e "$1/lib/ld-linux-aarch64.so.1" ]] &&
    [[ -e "$1/usr/lib/aarch64-linux-gnu/libstdc++.so.6" ]] &&
    [[ -e "$1/lib/aarch64-linux-gnu/libgcc_s.so.1" || -e "$1/usr/lib/aarch64-linux-gnu/libgcc_s.so.1" ]]
}

if complete "$sysroot"; then
  echo "$sysroot"
  exit 0
fi

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
fi
# The package lists know arm64 only after an update that followed --add-architecture.
if ! apt-cache show libc6:arm64 >/dev/null 2>&1; then
  apt-get update -qq
fi

mkdir -p "$cache_dir"
work="$(mktemp -d "$cache_dir/arm64-sysroot.XXXXXX")"
# apt-get download runs as the _apt user, which cannot reach into /root: download under /tmp.
debs="$(mktemp -d)"
trap 'rm -rf "$work" "$debs"' EXIT
chmod 0777 "$debs"
(cd "$debs" && apt-get download -qq "${packages[@]/%/:arm64}")
for deb in "$debs"/*.deb; do
  dpkg-deb -x "$deb" "$work/root"
done
if ! complete "$work/root"; then
  echo "arm64-sysroot: the unpacked packages lack the loader or a library; see $work/root" >&2
  trap 'rm -rf "$debs"' EXIT
  exit 1
fi

rm -rf "$sysroot"
mv "$work/root" "$sysroot"
echo "$sysroot"
