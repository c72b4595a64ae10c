"""SamplerLMLWrap ("Sampler LML Wrap"): LML around any sampler.

Takes a SAMPLER (ComfyUI's own from KSamplerSelect, ours, or another pack's KSAMPLER-based
one) and returns a SAMPLER that runs it with the LM correction on the denoised prediction of
each model call (``lml_core.lml_wrap``), for SamplerCustom / SamplerCustomAdvanced.  The
wrapped sampler keeps its own options (eta, s_noise, ...).
"""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..lml_core import DAMPING_MODES, WRAP_DEFAULTS
from .bridge import wrapped_sampler
from .lm_settings import WRAP_ORDER, lm_inputs, validate, wrap_options
from .sampler_nodes import samplers_category


class SamplerLMLWrap(io.ComfyNode):
    """A SAMPLER in, the same sampler with the LM correction on its model calls out."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SamplerLMLWrap",
            display_name="Sampler LML Wrap",
            category=samplers_category(),
            description=(
                "Wraps any sampler (KSamplerSelect's, Sampler LML's or another pack's) with the "
                "Levenberg-Marquardt correction: every model call's direction is corrected by "
                "a damped low-rank curvature estimate from the previous calls. Connect it "
                "between a sampler node and SamplerCustom / SamplerCustomAdvanced."),
            inputs=[io.Sampler.Input("sampler", tooltip="The sampler to wrap."),
                    *lm_inputs(WRAP_ORDER, WRAP_DEFAULTS)],
            outputs=[io.Sampler.Output(tooltip="The wrapped sampler.")],
        )

    @classmethod
    def validate_inputs(cls, damping_mode=None, damping=None, fade=None, start_percent=None,
                        end_percent=None):
        return validate({"damping_mode": (damping_mode, DAMPING_MODES)}, damping=damping,
                        fade=fade, start_percent=start_percent, end_percent=end_percent)

    @classmethod
    def execute(cls, sampler, **lm) -> io.NodeOutput:
        function = getattr(sampler, "sampler_function", None)
        if not isinstance(sampler, comfy.samplers.KSAMPLER) or not callable(function):
            raise ValueError(
                f"Sampler LML Wrap cannot wrap a {type(sampler).__name__}: only samplers "
                "built on ComfyUI's KSAMPLER (a k-diffusion sampler function) can be wrapped")
        return io.NodeOutput(comfy.samplers.KSAMPLER(
            wrapped_sampler(function, wrap_options(**lm)),
            extra_options=dict(sampler.extra_options),
            inpaint_options=dict(sampler.inpaint_options)))

