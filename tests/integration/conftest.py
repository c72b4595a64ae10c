"""One real ComfyUI server per test session, with this pack linked into custom_nodes.

The server runs the host installed by scripts/install_host.sh on a free port in 8190-8260, with
the random-weight SD1.5-layout test checkpoint (made once, cached under .host/models) and a
64x64 copy of the img2img example's input image uploaded through /upload/image."""

import pytest

from harness import comfy_host, workflows


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    # The base folder (with comfyui.log) stays in pytest's tmp dir; the server stops by PID.
    with comfy_host.ComfyServer(base_dir=tmp_path_factory.mktemp("comfy_base"),
                                extra_args=["--preview-method", "latent2rgb"]) as host:
        small = tmp_path_factory.mktemp("input") / workflows.INPUT_IMAGE.name
        workflows.write_input_image(small, size=64)
        host.upload_image(small)
        yield host


@pytest.fixture(scope="session")
def object_info(server):
    return server.object_info()
