"""The pack's ComfyUI nodes; the only package that imports comfy.

Importing it registers the LML names in the built-in sampler dropdowns (idempotently) and
merges the node mappings of the node modules.
"""

from . import compare_node, sampler_nodes
from .dropdown import register_dropdown_samplers
from .lab_node import register as register_lab_node

NODE_CLASS_MAPPINGS = {**sampler_nodes.NODE_CLASS_MAPPINGS, **compare_node.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**sampler_nodes.NODE_DISPLAY_NAME_MAPPINGS,
                              **compare_node.NODE_DISPLAY_NAME_MAPPINGS}
register_lab_node(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS)

register_dropdown_samplers()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
