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
    with comfy_host.ComfyServer(base_dir=tmp_path_factory.mktemp("comfy_web"),
                                ports=WEB_PORTS) as host:
        yield host
