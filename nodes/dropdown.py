"""Adds the LML samplers, with lml_core's default settings, to ComfyUI's built-in sampler lists.

After ``register_dropdown_samplers()`` the names (``lml_euler``, ``lml_dpmpp_2m``,
``lml_euler_ancestral``) appear in KSampler, KSamplerAdvanced and KSamplerSelect, and
``comfy.samplers.ksampler(name)`` finds ``comfy.k_diffusion.sampling.sample_<name>``.

Other packs edit the same lists, so this is idempotent and non-destructive: a name is appended
only where it is missing, nothing is reordered or removed, and an existing ``sample_<name>``
attribute is left alone.  Loading the pack twice therefore adds nothing the second time.
"""

from __future__ import annotations

import logging

from ..lml_core import SAMPLERS
from .bridge import comfy_sampler

DROPDOWN_NAMES = tuple(SAMPLERS)  # ("lml_euler", "lml_dpmpp_2m", "lml_euler_ancestral")


def _sampler_lists(comfy_samplers):
    """The distinct list objects ComfyUI builds its sampler dropdowns from.

    SAMPLER_NAMES is a copy of KSAMPLER_NAMES plus ddim/uni_pc; KSampler.SAMPLERS is normally
    the SAMPLER_NAMES object itself, but another pack may have rebound it to a new list."""
    lists = []
    for owner, attr in ((comfy_samplers, "KSAMPLER_NAMES"), (comfy_samplers, "SAMPLER_NAMES"),
                        (getattr(comfy_samplers, "KSampler", None), "SAMPLERS")):
        names = getattr(owner, attr, None)
        if isinstance(names, list) and not any(names is seen for seen in lists):
            lists.append(names)
    return lists


def register_dropdown_samplers(names=DROPDOWN_NAMES):
    """Register ``names`` in ComfyUI's sampler lists; return the names newly appended."""
    import comfy.k_diffusion.sampling as k_diffusion_sampling
    import comfy.samplers

    for name in names:
        attr = f"sample_{name}"
        existing = getattr(k_diffusion_sampling, attr, None)
        if existing is None:
            setattr(k_diffusion_sampling, attr, comfy_sampler(name))
        elif getattr(existing, "lml_sampler", None) != name:
            logging.warning("comfyui-lml: comfy.k_diffusion.sampling.%s already exists and is "
                            "not ours; leaving it in place", attr)

    added = []
    for names_list in _sampler_lists(comfy.samplers):
        for name in names:
            if name not in names_list:
                names_list.append(name)
                if name not in added:
                    added.append(name)
    return added
