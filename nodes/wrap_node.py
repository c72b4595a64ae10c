"""SamplerLMLWrap ("Sampler LML Wrap"): LML around any sampler.

Takes a SAMPLER (ComfyUI's own from KSamplerSelect, ours, or another pack's KSAMPLER-based
one) and returns a SAMPLER that runs it with the LM correction on the denoised prediction of
each model call (``lml_core.lml_wrap``), for SamplerCustom / SamplerCustomAdvanced.  The
wrapped sampler keeps its own options (eta, s_noise, ...).
"""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..lml_core import WRAP_DEFAULTS, LMOptions, omega_widget
from .bridge import wrapped_sampler
from .sampler_nodes import LMSettingsNode, lml_inputs, samplers_category


def wrap_inputs() -> list[io.Input]:
    """The shared LM inputs with WRAP_DEFAULTS as defaults, plus ``fade`` after damping."""
    shared = lml_inputs(WRAP_DEFAULTS)
    fade = io.Float.Input(
        "fade", default=float(WRAP_DEFAULTS["fade"]), min=0.0, max=10.0, step=0.1,
        tooltip="How fast the correction fades as the steps get shorter: the damping grows like "
                "h^-fade on steps shorter than 1 in log-SNR (0 = no fade). High-order samplers "
                "are disturbed by the correction most on short steps.")
    return [shared["rank"], shared["damping"], fade,
            *(shared[name] for name in ("kappa", "damping_mode", "omega", "start_percent",
                                        "end_percent"))]


class SamplerLMLWrap(LMSettingsNode):
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
                    *wrap_inputs()],
            outputs=[io.Sampler.Output(tooltip="The wrapped sampler.")],
        )

    @classmethod
    def execute(cls, sampler, rank, damping, fade, kappa, damping_mode, omega, start_percent,
                end_percent) -> io.NodeOutput:
        function = getattr(sampler, "sampler_function", None)
        if not isinstance(sampler, comfy.samplers.KSAMPLER) or not callable(function):
            raise ValueError(
                f"Sampler LML Wrap cannot wrap a {type(sampler).__name__}: only samplers "
                "built on ComfyUI's KSAMPLER (a k-diffusion sampler function) can be wrapped")
        lm = LMOptions(rank=rank, damping=damping, kappa=kappa, damping_mode=damping_mode,
                       omega=omega_widget(omega), start_percent=start_percent,
                       end_percent=end_percent, fade=fade)
        return io.NodeOutput(comfy.samplers.KSAMPLER(
            wrapped_sampler(function, lm), extra_options=dict(sampler.extra_options),
            inpaint_options=dict(sampler.inpaint_options)))


NODE_CLASS_MAPPINGS = {"SamplerLMLWrap": SamplerLMLWrap}
NODE_DISPLAY_NAME_MAPPINGS = {"SamplerLMLWrap": "Sampler LML Wrap"}
