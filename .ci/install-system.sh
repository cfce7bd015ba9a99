#!/usr/bin/env bash
# System packages the project needs (Debian/Ubuntu): installs what is missing when it can
# (root, or passwordless sudo), otherwise says exactly what to install.
set -euo pipefail
# command -> Debian package
declare -A NEEDED=(
  [shellcheck]=shellcheck
)
for extra in "$@"; do NEEDED[$extra]=$extra; done
missing=()
for cmd in "${!NEEDED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif sudo -n true 2>/dev/null; then
  SUDO="sudo"
else
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
