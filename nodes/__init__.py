"""The pack's ComfyUI nodes; the only package that imports comfy.

Importing it registers the LML names in the built-in sampler dropdowns (idempotently), adds
the template-thumbnail route (templates.py) and merges the node mappings of the node modules.
The node classes are V3 ``io.ComfyNode`` classes; ComfyUI's loader (0.3.75 and newest) takes
them from NODE_CLASS_MAPPINGS like V1 classes, so each module keeps its own mappings.
"""

from . import calibrate_node, compare_node, lab_node, sampler_nodes, wrap_node
from .dropdown import register_dropdown_samplers
from .templates import register_thumbnail_route

NODE_MODULES = (sampler_nodes, compare_node, lab_node, wrap_node, calibrate_node)
NODE_CLASS_MAPPINGS = {k: v for m in NODE_MODULES for k, v in m.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in NODE_MODULES
                              for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}

register_dropdown_samplers()
register_thumbnail_route()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
