"""A real ComfyUI server for the web tests (pack linked in, test checkpoint), one per session.

Same harness as tests/integration (scripts/comfy_host.py), on a port in 8270-8299 so it never
collides with the integration server when both run."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import comfy_host  # noqa: E402

WEB_PORTS = range(8270, 8300)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    if not comfy_host.HOST_PYTHON.exists():
        pytest.fail("the ComfyUI host is missing: run scripts/install_host.sh")
    comfy_host.ensure_checkpoint()
    port = comfy_host.free_port(WEB_PORTS)
    host = comfy_host.ComfyServer(base_dir=tmp_path_factory.mktemp("comfy_web"), port=port)
    host.start()
    try:
        yield host
    finally:
        host.stop()


_seed = iter(range(500_000, 10**6))


@pytest.fixture
def fresh_seed():
    """A seed no earlier test used: identical prompts are served from ComfyUI's cache."""
    return lambda: next(_seed)
