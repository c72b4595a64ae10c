"""SamplerLML (a SAMPLER for SamplerCustom / SamplerCustomAdvanced) and KSamplerLML (all in one).

Both are thin: the math lives in lml_core, the sampling path is ComfyUI's own (comfy.sample), so
model management, masks, denoise < 1, batches, previews, progress and Cancel behave as with the
built-in samplers.  Widget defaults are read from lml_core.DEFAULTS, never repeated here.

The nodes are written in ComfyUI's V3 schema (``comfy_api.latest``: ``io.ComfyNode``,
``define_schema``, ``execute``, ``io.NodeOutput``), which every supported host (0.3.75 and newer)
has.  Node ids, input names and input order are those of the V1 nodes they replace, so saved
workflows (whose ``widgets_values`` are positional) keep loading.
"""

from __future__ import annotations

import functools
import importlib

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..lml_core import (
    ANCESTRAL_DEFAULTS,
    DAMPING_MODES,
    DEFAULTS,
    SAMPLERS,
    LMOptions,
    omega_widget,
)
from .bridge import StepDiagnostics, comfy_sampler, empty_latent_fixed, output_latent

SOLVERS = tuple(name[len("lml_"):] for name in SAMPLERS)  # ("euler", "dpmpp_2m", "euler_ancestral")

# The settings a user changes most stay up front; the others are "advanced" inputs, which newer
# frontends fold away behind a per-node toggle (Vue nodes) and older ones show as before.
ADVANCED_INPUTS = ("kappa", "damping_mode", "omega", "start_percent", "end_percent", "eta",
                   "s_noise")


def advanced(inp: io.Input) -> io.Input:
    """Mark a V3 input as advanced on every host.

    Newer hosts have an ``advanced`` option on ``io.Input`` (and raise TypeError for the keyword
    on 0.3.75, which would stop the whole pack from loading); where the attribute is missing the
    flag goes through ``extra_dict``, which ComfyUI copies into /object_info unchanged.  Either
    way the input spec carries ``"advanced": true``."""
    if hasattr(inp, "advanced"):
        inp.advanced = True
    else:
        inp.extra_dict = {**(inp.extra_dict or {}), "advanced": True}
    return inp


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


def lml_inputs(defaults=DEFAULTS) -> dict[str, io.Input]:
    """The LM-correction inputs shared by the nodes, by name, in display order, with
    ``defaults`` (a table of lml_core.options) as widget defaults."""
    inputs = {
        "solver": io.Combo.Input(
            "solver", options=list(SOLVERS), default=SOLVERS[0],
            tooltip="The ODE/SDE solver the LM correction is applied to: euler (first order), "
                    "dpmpp_2m (DPM-Solver++(2M), second order multistep) or euler_ancestral "
                    "(Langevin: adds fresh noise every step, uses eta and s_noise)."),
        "rank": io.Int.Input(
            "rank", default=max(1, int(defaults["rank"])), min=1, max=16,
            tooltip="How many previous step directions form the low-rank curvature estimate. "
                    "1 is cheapest; larger ranks use more history."),
        "damping": io.Float.Input(
            "damping", default=float(defaults["damping"]), min=0.001, max=10000.0, step=0.01,
            round=0.001,
            tooltip="Levenberg-Marquardt damping lambda (> 0). Large values shrink the "
                    "correction towards the plain solver; small values trust the curvature "
                    "estimate more."),
        "kappa": io.Float.Input(
            "kappa", default=float(defaults["kappa"]), min=0.0, max=1.0, step=0.01,
            tooltip="Weight of the previous directions in the curvature estimate: 0 switches "
                    "the correction off (the plain solver), 1 uses the history directions "
                    "alone."),
        "damping_mode": io.Combo.Input(
            "damping_mode", options=list(DAMPING_MODES), default=defaults["damping_mode"],
            tooltip="relative: lambda = damping x the mean squared size of the history (one "
                    "setting for every model and resolution); absolute: lambda = damping; "
                    "adaptive: lambda is solved per step so that the direction turns away from "
                    "the history by omega times its angle to it."),
        "omega": io.Float.Input(
            "omega", default=float(omega_widget(defaults["omega"])), min=-1.0, max=2.0,
            step=0.05,
            tooltip="adaptive damping_mode only: the fraction of the angle between the "
                    "direction and the history by which the direction is turned. -1 (any "
                    "negative value) means auto: the Adams-Bashforth-2 weight "
                    "h_n / (2 h_(n-1)) from the log-SNR step sizes."),
        "start_percent": io.Float.Input(
            "start_percent", default=float(defaults["start_percent"]), min=0.0, max=1.0,
            step=0.01,
            tooltip="Fraction of the steps after which the correction starts (0 = from the "
                    "first step). Must not be greater than end_percent."),
        "end_percent": io.Float.Input(
            "end_percent", default=float(defaults["end_percent"]), min=0.0, max=1.0, step=0.01,
            tooltip="Fraction of the steps at which the correction stops (1 = until the last "
                    "step)."),
        "eta": io.Float.Input(
            "eta", default=ANCESTRAL_DEFAULTS["eta"], min=0.0, max=100.0, step=0.01,
            round=False,
            tooltip="euler_ancestral only: amount of fresh noise per step (0 = lml euler)."),
        "s_noise": io.Float.Input(
            "s_noise", default=ANCESTRAL_DEFAULTS["s_noise"], min=0.0, max=100.0, step=0.01,
            round=False, tooltip="euler_ancestral only: scale of the fresh noise."),
    }
    for name in ADVANCED_INPUTS:
        advanced(inputs[name])
    return inputs


def validate_percent_range(start_percent=None, end_percent=None):
    """ComfyUI's validation hook for the start/end pair.

    Declaring these two arguments makes ComfyUI skip its own min/max check for them, so the
    bounds are checked here too.  Values coming from links are not known yet (None) and are
    checked at run time by lml_core instead."""
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number, got {value!r}"
        if not 0.0 <= value <= 1.0:
            return f"{name} must be between 0 and 1, got {value}"
    if start_percent is not None and end_percent is not None and start_percent > end_percent:
        return (f"start_percent ({start_percent}) must not be greater than "
                f"end_percent ({end_percent})")
    return True


def sampler_options(solver, rank, damping, kappa, damping_mode, omega, start_percent,
                    end_percent, eta, s_noise):
    """The widgets as the sampler's ``extra_options``: one validated ``LMOptions`` (``lm``),
    plus eta and s_noise for euler_ancestral.  A bad value raises a ValueError naming it, at
    the node, before any model is loaded."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    lm = LMOptions(rank=rank, damping=damping, kappa=kappa, damping_mode=damping_mode,
                   omega=omega_widget(omega), start_percent=start_percent,
                   end_percent=end_percent)
    if solver == "euler_ancestral":
        return {"lm": lm, "eta": eta, "s_noise": s_noise}
    return {"lm": lm}


class LMSettingsNode(io.ComfyNode):
    """Base of the nodes that show the LM inputs: ComfyUI calls validate_inputs before it queues
    the prompt.

    Besides the step window it checks the dropdown values: a V3 combo is served as
    ``["COMBO", {"options": [...]}]``, and ComfyUI 0.3.75's validation only checks list-typed
    (V1) combos, so without this an unknown solver or scheduler would only fail at run time.
    Naming an input here makes ComfyUI skip its own check of that input on every version."""

    COMBO_INPUTS = ("solver", "damping_mode", "scheduler", "baseline_sampler")

    @classmethod
    def validate_inputs(cls, solver=None, damping_mode=None, scheduler=None,
                        baseline_sampler=None, start_percent=None, end_percent=None):
        options = {inp.id: inp.options for inp in cls.define_schema().inputs
                   if isinstance(inp, io.Combo.Input)}
        values = {"solver": solver, "damping_mode": damping_mode, "scheduler": scheduler,
                  "baseline_sampler": baseline_sampler}
        for name, value in values.items():
            if value is None or name not in options:  # linked (checked at run time), or absent
                continue
            if value not in options[name]:
                choices = options[name]
                shown = choices if len(choices) <= 12 else f"a list of {len(choices)} names"
                return f"{name} must be one of {shown}, got {value!r}"
        return validate_percent_range(start_percent, end_percent)


class SamplerLML(LMSettingsNode):
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
            inputs=list(lml_inputs().values()),
            outputs=[io.Sampler.Output(
                tooltip="The LML sampler, for SamplerCustom or SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, solver, rank, damping, kappa, damping_mode, omega, start_percent,
                end_percent, eta, s_noise) -> io.NodeOutput:
        options = sampler_options(solver, rank, damping, kappa, damping_mode, omega,
                                  start_percent, end_percent, eta, s_noise)
        return io.NodeOutput(
            comfy.samplers.KSAMPLER(comfy_sampler(f"lml_{solver}"), extra_options=options))


class KSamplerLML(LMSettingsNode):
    """KSampler with the LML sampler and its settings, plus per-step diagnostics for the UI."""

    @classmethod
    def define_schema(cls):
        lml = lml_inputs()
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
    def execute(cls, model, seed, steps, cfg, solver, scheduler, positive, negative,
                latent_image, denoise, rank, damping, kappa, damping_mode, omega,
                start_percent, end_percent, eta, s_noise) -> io.NodeOutput:
        options = sampler_options(solver, rank, damping, kappa, damping_mode, omega,
                                  start_percent, end_percent, eta, s_noise)
        # The same preparation as nodes.common_ksampler, with an LML KSAMPLER object.
        latent = latent_image
        samples_in = empty_latent_fixed(model, latent)
        noise = comfy.sample.prepare_noise(samples_in, seed, latent.get("batch_index"))
        sigmas = comfy.samplers.KSampler(
            model, steps=steps, device=model.load_device, sampler="euler", scheduler=scheduler,
            denoise=denoise, model_options=model.model_options).sigmas

        diagnostics = StepDiagnostics()
        sampler = comfy.samplers.KSAMPLER(comfy_sampler(f"lml_{solver}", record=diagnostics),
                                          extra_options=options)
        callback = latent_preview.prepare_callback(model, steps)
        disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
        samples = comfy.sample.sample_custom(
            model, noise, cfg, sampler, sigmas, positive, negative, samples_in,
            noise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=disable_pbar,
            seed=seed)
        return io.NodeOutput(output_latent(latent, samples),
                             ui={"lml_diagnostics": [diagnostics.as_ui(solver)]})


NODE_CLASS_MAPPINGS = {"SamplerLML": SamplerLML, "KSamplerLML": KSamplerLML}
NODE_DISPLAY_NAME_MAPPINGS = {"SamplerLML": "Sampler LML (Levenberg-Marquardt-Langevin)",
                              "KSamplerLML": "KSampler (LML)"}
