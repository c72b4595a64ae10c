#!/usr/bin/env bash
# Install what the browser test (tests/web/test_browser.py) needs. Idempotent.
#   - Debian's chromium (apt), the browser the test drives headless;
#   - pip `playwright` in the host venv, used only as a driver for /usr/bin/chromium
#     (we never run `playwright install`: no browser downloads);
#   - the newest ComfyUI frontend (comfyui-frontend-package, pip --target) into
#     $HOST/frontends/<version>/, beside the one the host pins (which stays untouched).
# Run after scripts/install_host.sh. Needs root (or sudo) for apt when chromium is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST="${LML_HOST_DIR:-$ROOT/.host}"
VENV_PY="$HOST/venv/bin/python"

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "browser: $(chromium --version 2>/dev/null | head -n1)"

if [ ! -x "$VENV_PY" ]; then
  echo "browser: host venv missing ($VENV_PY); run scripts/install_host.sh first" >&2
  exit 1
fi
if ! "$VENV_PY" -c "import playwright" >/dev/null 2>&1; then
  constraints=()
  [ -f "$HOST/constraints.txt" ] && constraints=(-c "$HOST/constraints.txt")
  "$VENV_PY" -m pip install --quiet --disable-pip-version-check "${constraints[@]}" "playwright>=1.40"
fi
"$VENV_PY" -c "import importlib.metadata as m; print('browser: playwright', m.version('playwright'))"

# The newest frontend, beside (never instead of) the one the host pins: the browser test runs
# against both, starting a second server with --front-end-root at this copy's static folder.
NEWEST_FRONTEND="${LML_NEWEST_FRONTEND:-1.58.1}"
FRONTEND_DIR="$HOST/frontends/$NEWEST_FRONTEND"
if [ ! -f "$FRONTEND_DIR/comfyui_frontend_package/static/index.html" ]; then
  rm -rf "$FRONTEND_DIR.tmp"
  "$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$FRONTEND_DIR.tmp" "comfyui-frontend-package==$NEWEST_FRONTEND"
  rm -rf "$FRONTEND_DIR"
  mv "$FRONTEND_DIR.tmp" "$FRONTEND_DIR"
fi
echo "browser: frontend $NEWEST_FRONTEND in $FRONTEND_DIR"
