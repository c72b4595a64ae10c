#!/usr/bin/env bash
# The main job (README's first command): install the ComfyUI host if missing, start ComfyUI
# headless with this pack, run every example workflow through the HTTP API and write the
# images to output/examples/ (printed at the end).  Options: see harness/examples.py (-h).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install_host.sh
exec "${LML_HOST_DIR:-$ROOT/.host}/venv/bin/python" -m harness.examples "$@"
