"""SamplerLML (a SAMPLER for SamplerCustom / SamplerCustomAdvanced) and KSamplerLML (all in one).

Both are thin: the math lives in lml_core, the sampling path is ComfyUI's own (comfy.sample), so
model management, masks, denoise < 1, batches, previews, progress and Cancel behave as with the
built-in samplers.  Widget defaults are read from lml_core.DEFAULTS, never repeated here.
"""

from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..lml_core import (
    ANCESTRAL_DEFAULTS,
    DAMPING_MODES,
    DEFAULTS,
    SAMPLERS,
    LMOptions,
    omega_widget,
)
from .bridge import StepDiagnostics, comfy_sampler

SOLVERS = tuple(name[len("lml_"):] for name in SAMPLERS)  # ("euler", "dpmpp_2m", "euler_ancestral")

def lml_inputs():
    """The LM-correction widgets shared by both nodes, in display order."""
    return {
        "solver": (list(SOLVERS), {
            "default": SOLVERS[0],
            "tooltip": "The ODE/SDE solver the LM correction is applied to: euler (first order), "
                       "dpmpp_2m (DPM-Solver++(2M), second order multistep) or euler_ancestral "
                       "(Langevin: adds fresh noise every step, uses eta and s_noise)."}),
        "rank": ("INT", {
            "default": max(1, int(DEFAULTS["rank"])), "min": 1, "max": 16,
            "tooltip": "How many previous step directions form the low-rank curvature estimate. "
                       "1 is cheapest; larger ranks use more history."}),
        "damping": ("FLOAT", {
            "default": float(DEFAULTS["damping"]), "min": 0.001, "max": 10000.0, "step": 0.01,
            "round": 0.001,
            "tooltip": "Levenberg-Marquardt damping lambda (> 0). Large values shrink the "
                       "correction towards the plain solver; small values trust the curvature "
                       "estimate more."}),
        "kappa": ("FLOAT", {
            "default": float(DEFAULTS["kappa"]), "min": 0.0, "max": 1.0, "step": 0.01,
            "tooltip": "Weight of the previous directions in the curvature estimate: 0 "
                       "switches the correction off (the plain solver), 1 uses the history "
                       "directions alone."}),
        "damping_mode": (list(DAMPING_MODES), {
            "default": DEFAULTS["damping_mode"],
            "tooltip": "relative: lambda = damping x the mean squared size of the history "
                       "(one setting for every model and resolution); absolute: lambda = "
                       "damping; adaptive: lambda is solved per step so that the direction "
                       "turns away from the history by omega times its angle to it."}),
        "omega": ("FLOAT", {
            "default": float(omega_widget(DEFAULTS["omega"])), "min": -1.0, "max": 2.0,
            "step": 0.05,
            "tooltip": "adaptive damping_mode only: the fraction of the angle between the "
                       "direction and the history by which the direction is turned. -1 (any "
                       "negative value) means auto: the Adams-Bashforth-2 weight "
                       "h_n / (2 h_(n-1)) from the log-SNR step sizes."}),
        "start_percent": ("FLOAT", {
            "default": float(DEFAULTS["start_percent"]), "min": 0.0, "max": 1.0, "step": 0.01,
            "tooltip": "Fraction of the steps after which the correction starts (0 = from the "
                       "first step). Must not be greater than end_percent."}),
        "end_percent": ("FLOAT", {
            "default": float(DEFAULTS["end_percent"]), "min": 0.0, "max": 1.0, "step": 0.01,
            "tooltip": "Fraction of the steps at which the correction stops (1 = until the "
                       "last step)."}),
        "eta": ("FLOAT", {
            "default": ANCESTRAL_DEFAULTS["eta"], "min": 0.0, "max": 100.0, "step": 0.01,
            "round": False,
            "tooltip": "euler_ancestral only: amount of fresh noise per step (0 = lml euler)."}),
        "s_noise": ("FLOAT", {
            "default": ANCESTRAL_DEFAULTS["s_noise"], "min": 0.0, "max": 100.0, "step": 0.01,
            "round": False, "tooltip": "euler_ancestral only: scale of the fresh noise."}),
    }


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


class LMSettingsNode:
    """Base of the nodes that show the LM widgets: ComfyUI calls VALIDATE_INPUTS on the step
    window before it queues the prompt."""

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent=None, end_percent=None):
        return validate_percent_range(start_percent, end_percent)


class SamplerLML(LMSettingsNode):
    """The LML sampler as a SAMPLER, for SamplerCustom / SamplerCustomAdvanced."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": lml_inputs()}

    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("The LML sampler, for SamplerCustom or SamplerCustomAdvanced.",)
    FUNCTION = "get_sampler"
    CATEGORY = "sampling/custom_sampling/samplers"
    DESCRIPTION = (
        "Levenberg-Marquardt-Langevin (LML) sampler: a chosen solver (euler, dpmpp_2m, "
        "euler_ancestral) whose step direction is corrected by a damped low-rank curvature "
        "estimate built from the previous steps. Connect it to SamplerCustom or "
        "SamplerCustomAdvanced.")

    def get_sampler(self, solver, rank, damping, kappa, damping_mode, omega, start_percent,
                    end_percent, eta, s_noise):
        options = sampler_options(solver, rank, damping, kappa, damping_mode, omega,
                                  start_percent, end_percent, eta, s_noise)
        return (comfy.samplers.KSAMPLER(comfy_sampler(f"lml_{solver}"), extra_options=options),)


class KSamplerLML(LMSettingsNode):
    """KSampler with the LML sampler and its settings, plus per-step diagnostics for the UI."""

    @classmethod
    def INPUT_TYPES(cls):
        lml = lml_inputs()
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                             "control_after_generate": True,
                             "tooltip": "The random seed used for creating the noise."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000,
                              "tooltip": "The number of steps used in the denoising process."}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1,
                              "round": 0.01, "tooltip": "Classifier-free guidance scale."}),
            "solver": lml.pop("solver"),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {
                "tooltip": "The scheduler controls how noise is gradually removed."}),
            "positive": ("CONDITIONING", {"tooltip": "What to include in the image."}),
            "negative": ("CONDITIONING", {"tooltip": "What to exclude from the image."}),
            "latent_image": ("LATENT", {"tooltip": "The latent image to denoise (a noise_mask "
                                                   "from SetLatentNoiseMask is honoured)."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Amount of denoising; below 1 keeps the structure "
                                             "of the input latent (img2img)."}),
            **lml,
        }}

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"
    CATEGORY = "sampling"
    DESCRIPTION = (
        "KSampler with the Levenberg-Marquardt-Langevin (LML) sampler: denoises the latent "
        "with the chosen solver, correcting each step with a damped low-rank curvature "
        "estimate from the previous steps. Shows per-step sigma and correction strength.")

    def sample(self, model, seed, steps, cfg, solver, scheduler, positive, negative,
               latent_image, denoise, rank, damping, kappa, damping_mode, omega, start_percent,
               end_percent, eta, s_noise):
        options = sampler_options(solver, rank, damping, kappa, damping_mode, omega,
                                  start_percent, end_percent, eta, s_noise)
        # The same preparation as nodes.common_ksampler, with an LML KSAMPLER object.
        latent = latent_image
        samples_in = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
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

        out = latent.copy()
        out["samples"] = samples
        return {"ui": {"lml_diagnostics": [diagnostics.as_ui(solver)]}, "result": (out,)}


NODE_CLASS_MAPPINGS = {"SamplerLML": SamplerLML, "KSamplerLML": KSamplerLML}
NODE_DISPLAY_NAME_MAPPINGS = {"SamplerLML": "Sampler LML (Levenberg-Marquardt-Langevin)",
                              "KSamplerLML": "KSampler (LML)"}
