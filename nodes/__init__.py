"""The pack's ComfyUI nodes; the only package that imports comfy.

Importing it registers the LML names in the built-in sampler dropdowns (idempotently) and adds
the template-thumbnail route (templates.py).  The nodes are V3 ``io.ComfyNode`` classes, served
to ComfyUI as core does it: ``comfy_entrypoint()`` returns a ``ComfyExtension`` whose
``get_node_list()`` lists them; each schema carries its node id and display name.
"""

from comfy_api.latest import ComfyExtension

from .calibrate_node import LMLCalibrate, SamplerLMLCalibrated
from .calibrate_sigmas_node import LMLCalibrateSigmas, SigmasLMLCalibrated
from .compare_node import LMLCompare
from .dropdown import register_dropdown_samplers
from .lab_node import LMLSamplerLab
from .sampler_nodes import KSamplerLML, SamplerLML
from .templates import register_thumbnail_route
from .wrap_node import SamplerLMLWrap

NODES = (SamplerLML, KSamplerLML, LMLCompare, SamplerLMLWrap, LMLSamplerLab, LMLCalibrate,
         SamplerLMLCalibrated, LMLCalibrateSigmas, SigmasLMLCalibrated)
NODES_BY_ID = {node.GET_SCHEMA().node_id: node for node in NODES}  # for tests and tools

register_dropdown_samplers()
register_thumbnail_route()


class LMLExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


async def comfy_entrypoint() -> ComfyExtension:
    return LMLExtension()


__all__ = ["NODES", "comfy_entrypoint"]
