#!/usr/bin/env bash
# System packages the tests and the demo use for real: the mosquitto broker and
# clients; as root also debootstrap/systemd-container for the systemd-in-a-container
# tests. Idempotent: installs only what is missing.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_rr >/dev/null 2>&1 || need+=(mosquitto-clients)
if [ "$(id -u)" = 0 ]; then
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
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
