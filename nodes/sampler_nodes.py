"""SamplerLML (a SAMPLER for SamplerCustom / SamplerCustomAdvanced) and KSamplerLML (all in one).

Both are thin: the math lives in lml_core, the sampling path is ComfyUI's own (comfy.sample), so
model management, masks, denoise < 1, batches, previews, progress and Cancel behave as with the
built-in samplers.  The LM inputs are declared once, in lm_settings; the run goes through
bridge.run_ksampler.

The nodes are written in ComfyUI's V3 schema (``comfy_api.latest``: ``io.ComfyNode``,
``define_schema``, ``execute``, ``io.NodeOutput``), which every supported host (0.3.75 and newer)
has.  Node ids, input names and input order are those of the V1 nodes they replace, so saved
workflows (whose ``widgets_values`` are positional) keep loading.
"""

from __future__ import annotations

import functools
import importlib

import comfy.samplers
from comfy_api.latest import io

from ..lml_core import DAMPING_MODES
from .bridge import StepDiagnostics, comfy_sampler, output_latent, run_ksampler
from .lm_settings import SOLVERS, check_number, sampler_options, solver_node_inputs, validate


@functools.cache
def builtin_category(module_name: str, class_name: str, fallback: str) -> str:
    """The category of one of the host's built-in nodes, so that ours sit beside it on every
    ComfyUI version (KSampler is under "sampling" in 0.3.75, "model/sampling" today)."""
    try:
        category = getattr(importlib.import_module(module_name), class_name).CATEGORY
    except Exception:  # an unexpected host layout: keep the 0.3.75 category
        return fallback
    return category if isinstance(category, str) and category else fallback


def ksampler_category() -> str:
    return builtin_category("nodes", "KSampler", "sampling")


def samplers_category() -> str:
    return builtin_category("comfy_extras.nodes_custom_sampler", "KSamplerSelect",
                            "sampling/custom_sampling/samplers")


class SamplerLML(io.ComfyNode):
    """The LML sampler as a SAMPLER, for SamplerCustom / SamplerCustomAdvanced."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SamplerLML",
            display_name="Sampler LML (Levenberg-Marquardt-Langevin)",
            category=samplers_category(),
            description=(
                "Levenberg-Marquardt-Langevin (LML) sampler: a chosen solver (euler, dpmpp_2m, "
                "euler_ancestral) whose step direction is corrected by a damped low-rank "
                "curvature estimate built from the previous steps. Connect it to SamplerCustom "
                "or SamplerCustomAdvanced."),
            inputs=list(solver_node_inputs().values()),
            outputs=[io.Sampler.Output(
                tooltip="The LML sampler, for SamplerCustom or SamplerCustomAdvanced.")],
        )

    @classmethod
    def validate_inputs(cls, solver=None, damping_mode=None, damping=None, fade=None,
                        start_percent=None, end_percent=None):
        return validate({"solver": (solver, SOLVERS),
                         "damping_mode": (damping_mode, DAMPING_MODES)},
                        damping=damping, fade=fade, start_percent=start_percent,
                        end_percent=end_percent)

    @classmethod
    def execute(cls, solver, **lm) -> io.NodeOutput:
        options = sampler_options(solver, **lm)
        return io.NodeOutput(
            comfy.samplers.KSAMPLER(comfy_sampler(f"lml_{solver}"), extra_options=options))


class KSamplerLML(io.ComfyNode):
    """KSampler with the LML sampler and its settings, plus per-step diagnostics for the UI."""

    @classmethod
    def define_schema(cls):
        lml = solver_node_inputs()
        return io.Schema(
            node_id="KSamplerLML",
            display_name="KSampler (LML)",
            category=ksampler_category(),
            description=(
                "KSampler with the Levenberg-Marquardt-Langevin (LML) sampler: denoises the "
                "latent with the chosen solver, correcting each step with a damped low-rank "
                "curvature estimate from the previous steps. Shows per-step sigma and "
                "correction strength."),
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising the input latent."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff,
                             control_after_generate=True,
                             tooltip="The random seed used for creating the noise."),
                io.Int.Input("steps", default=20, min=1, max=10000,
                             tooltip="The number of steps used in the denoising process."),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                lml.pop("solver"),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               tooltip="The scheduler controls how noise is gradually removed."),
                io.Conditioning.Input("positive", tooltip="What to include in the image."),
                io.Conditioning.Input("negative", tooltip="What to exclude from the image."),
                io.Latent.Input("latent_image",
                                tooltip="The latent image to denoise (a noise_mask from "
                                        "SetLatentNoiseMask is honoured)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Amount of denoising; below 1 keeps the structure of the "
                                       "input latent (img2img)."),
                *lml.values(),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent.")],
        )

    @classmethod
    def validate_inputs(cls, solver=None, scheduler=None, damping_mode=None, damping=None,
                        fade=None, start_percent=None, end_percent=None, cfg=None):
        # cfg: ComfyUI's bounds check lets NaN through, which would run to a NaN latent.
        return check_number(cls, "cfg", cfg) or validate(
            {"solver": (solver, SOLVERS),
             "scheduler": (scheduler, comfy.samplers.KSampler.SCHEDULERS),
             "damping_mode": (damping_mode, DAMPING_MODES)},
            damping=damping, fade=fade, start_percent=start_percent, end_percent=end_percent)

    @classmethod
    def execute(cls, model, seed, steps, cfg, solver, scheduler, positive, negative,
                latent_image, denoise, **lm) -> io.NodeOutput:
        message = check_number(cls, "cfg", cfg)
        if message:  # a linked cfg: known only now
            raise ValueError(message)
        options = sampler_options(solver, **lm)
        diagnostics = StepDiagnostics()
        sampler = comfy.samplers.KSAMPLER(comfy_sampler(f"lml_{solver}", record=diagnostics),
                                          extra_options=options)
        samples = run_ksampler(model, latent_image, seed, steps, cfg, sampler, f"lml_{solver}",
                               scheduler, positive, negative, denoise=denoise)
        return io.NodeOutput(output_latent(latent_image, samples),
                             ui={"lml_diagnostics": [diagnostics.as_ui(solver)]})
