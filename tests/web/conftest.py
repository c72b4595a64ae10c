"""A real ComfyUI server for the web tests (pack linked in, test checkpoint), one per session.

Same harness as tests/integration (harness.comfy_host), on a port in 8270-8299 so it never
collides with the integration server when both run."""

import pytest

from harness import comfy_host

WEB_PORTS = range(8270, 8300)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    with comfy_host.ComfyServer(base_dir=tmp_path_factory.mktemp("comfy_web"),
                                ports=WEB_PORTS) as host:
        yield host
