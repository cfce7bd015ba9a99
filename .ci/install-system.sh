#!/usr/bin/env bash
# System packages the project needs (Debian/Ubuntu): installs what is missing when it can
# (root, or passwordless sudo), otherwise says exactly what to install. Then the web page's npm
# packages (pinned in web/package-lock.json) into web/node_modules.
#   emscripten: links WebGPU .wasm libraries; chromium: headless WebGPU (SwiftShader) for the
#   browser tests; g++: compiles the toolchain header tests; npm: the page's two packages.
set -euo pipefail
cd "$(dirname "$0")/.."
# command -> Debian package
declare -A NEEDED=(
  [shellcheck]=shellcheck
  [emcc]=emscripten
  [chromium]=chromium
  [g++]=g++
  [npm]=npm
  [node]=nodejs
)
for extra in "$@"; do NEEDED[$extra]=$extra; done
missing=()
for cmd in "${!NEEDED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED[$cmd]}")
done
if [ ${#missing[@]} -ne 0 ]; then
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
fi
# The page imports these from web/node_modules (no bundler). Skipped when every package of the
# lock file is already installed at its locked version.
locked_installed() {
  python3 - <<'PY'
import json, pathlib, sys
lock = json.loads(pathlib.Path("web/package-lock.json").read_text())
for path, info in lock["packages"].items():
    if not path:
        continue
    manifest = pathlib.Path("web") / path / "package.json"
    if not manifest.is_file() or json.loads(manifest.read_text()).get("version") != info["version"]:
        sys.exit(1)
PY
}
if ! locked_installed; then
  (cd web && npm ci --no-audit --no-fund)
fi
