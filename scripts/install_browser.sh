#!/usr/bin/env bash
# Install what the browser test (tests/web/test_browser.py) needs. Idempotent.
#   - Debian's chromium (apt), the browser the test drives headless;
#   - pip `playwright` in the host venv, used only as a driver for /usr/bin/chromium
#     (we never run `playwright install`: no browser downloads).
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
