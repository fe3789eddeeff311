#!/usr/bin/env bash
# Install the Debian packages cnnlab uses, when running as root on a machine with apt.
# Elsewhere it says what it would need and carries on: the Python side works without them.
set -u
packages=(dataset-fashion-mnist chromium chromium-driver gcc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: not root or no apt-get; skipping system packages: ${missing[*]}" >&2
  exit 0
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null \
  || echo "warning: apt-get could not install ${missing[*]}; tests that need them will say so" >&2
exit 0
