"""The pack's ComfyUI nodes; the only package that imports comfy.

Importing it registers the LML names in the built-in sampler dropdowns (idempotently) and
merges the node mappings of every node module present.
"""

import importlib
import logging

from .dropdown import register_dropdown_samplers

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

# Node modules, merged in this order; optional ones may be absent from a checkout.
_NODE_MODULES = ("samplers", "compare")
_OPTIONAL = {"compare"}

for _name in _NODE_MODULES:
    try:
        _module = importlib.import_module(f".{_name}", __name__)
    except ModuleNotFoundError as error:
        if _name in _OPTIONAL and error.name == f"{__name__}.{_name}":
            continue
        raise
    NODE_CLASS_MAPPINGS.update(getattr(_module, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_module, "NODE_DISPLAY_NAME_MAPPINGS", {}))

register_dropdown_samplers()
logging.debug("comfyui-lml: nodes %s", sorted(NODE_CLASS_MAPPINGS))

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
