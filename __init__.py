"""comfyui-lml: the Levenberg-Marquardt-Langevin (LML) sampler for ComfyUI (entry point only)."""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
