"""The benchmark runs the host's own samplers: ComfyUI from .host/ComfyUI, importable (CPU)."""

import pytest

from harness import comfy_host

if not comfy_host.COMFY_DIR.joinpath("main.py").exists():
    raise pytest.UsageError("the ComfyUI host is missing: run scripts/install_host.sh "
                            "(scripts/test.sh does this)")
comfy_host.import_comfy()
