#!/usr/bin/env bash
# System packages the tests and the demo use for real: the mosquitto broker and
# clients; as root also what the host-booting tests need: debootstrap/systemd-container
# for the systemd-in-a-container hosts, and for the emulated Raspberry Pi (arm64) the
# aarch64 cross compilers (pi4 wheel), qemu-system-aarch64 and the image tools.
# Idempotent: installs only what is missing.
set -euo pipefail
need=()
# command -> Debian package
want() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || need+=("$2"); }
want mosquitto mosquitto
want mosquitto_rr mosquitto-clients
if [ "$(id -u)" = 0 ]; then
  want debootstrap debootstrap
  want systemd-nspawn systemd-container
  if [ "$(uname -m)" = x86_64 ]; then
    want aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
    want aarch64-linux-gnu-g++ g++-aarch64-linux-gnu
  fi
  want qemu-system-aarch64 qemu-system-arm
  want qemu-img qemu-utils
  want qemu-aarch64-static qemu-user-static
  want fdtput device-tree-compiler
  want mkfs.vfat dosfstools
  want mcopy mtools
  want socat socat
  want depmod kmod
  want cpio cpio
fi
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
# The Debian package enables a system broker on port 1883; tests start their own.
if [ -n "$(printf '%s\n' "${need[@]}" | grep -x mosquitto || true)" ]; then
  $sudo systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
