"""LMLCalibrateSigmas ("LML Calibrate Sigmas") and SigmasLMLCalibrated ("Sigmas LML
Calibrated"): the timesteps of any host sampler fitted to the user's own model, prompt and cfg
(lml_core.calibrate_sigmas), as SIGMAS for SamplerCustom / SamplerCustomAdvanced.

The fit runs through LML Calibrate's path (calibrate_node.run_calibration: ComfyUI's own
sampling path, progress, Cancel, the on-disk cache).  An ancestral / SDE sampler's timesteps
are fitted on its deterministic counterpart (bridge.deterministic_counterpart).  Sigmas LML
Calibrated turns the saved text back into SIGMAS, refusing one made for another kind of model
or sigma range.
"""

from __future__ import annotations

import math

import comfy.samplers
import torch
from comfy_api.latest import io

from ..lml_core import Calibration
from .calibrate_node import (
    AUTO_BATCH,
    DEFAULT_SAMPLES,
    MAX_SAMPLES,
    batch_size_input,
    calibration_inputs,
    check_calibration_text,
    check_count,
    fit_head_inputs,
    fitted_outputs,
    run_calibration,
    text_outputs,
)
from .lm_settings import check_number, validate
from .sampler_nodes import ksampler_category, samplers_category

# The fit options that apply to a timestep-only fit.
SIGMA_OPTIONS = ("heldout", "iterations", "regularization", "reference_steps")


def model_sampling_of_patcher(model):
    return model.get_model_object("model_sampling")


def model_kind_of_patcher(model) -> str:
    names = {c.__name__ for c in type(model_sampling_of_patcher(model)).__mro__}
    for kind, name in (("CONST", "flow"), ("V_PREDICTION", "v"), ("EDM", "edm"), ("EPS", "eps")):
        if kind in names:
            return name
    return "unknown"


def calibrated_sigmas(calibration: Calibration, model) -> torch.Tensor:
    """The calibration's sigmas for ``model``; a ValueError naming the calibration when it was
    made for another kind of model or sigma range."""
    kind = model_kind_of_patcher(model)
    fitted = calibration.fitted_on.get("model_kind")
    if fitted != kind:
        raise ValueError(f"calibration: made for a {fitted} model; this model is {kind}")
    sampling = model_sampling_of_patcher(model)
    low, high = float(sampling.sigma_min), float(sampling.sigma_max)
    first, last = calibration.sigmas[0], calibration.sigmas[-2]
    if not (math.isclose(first, high, rel_tol=1e-3) and last >= low * (1 - 1e-3)):
        raise ValueError(f"calibration: made for sigmas {first:.6g} -> {last:.6g}; this model's "
                         f"range is {high:.6g} -> {low:.6g}")
    return torch.tensor(calibration.sigmas, dtype=torch.float32)


class LMLCalibrateSigmas(io.ComfyNode):
    """Fits a host sampler's timesteps to a model, conditioning and cfg."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LMLCalibrateSigmas",
            display_name="LML Calibrate Sigmas",
            category=ksampler_category(),
            description=(
                "Fits the timesteps of any sampler to your model, prompt and cfg: starting from "
                "the scheduler's sigmas, Levenberg-Marquardt moves every timestep so that the "
                "sampler's result matches a converged solution from the same noise. Outputs "
                "SIGMAS for SamplerCustom / SamplerCustomAdvanced (with that sampler) and the "
                "calibration as text for Sigmas LML Calibrated."),
            inputs=[
                *fit_head_inputs(),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS,
                               default="dpmpp_2m",
                               tooltip="The sampler the sigmas are fitted for (an ancestral / "
                                       "SDE one is fitted without its noise)."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               default="karras",
                               tooltip="A start of the fit: it measures the sampler on every "
                                       "scheduler's sigmas and starts from the best."),
                io.Int.Input("steps", default=8, min=1, max=100),
                io.Int.Input("samples", default=DEFAULT_SAMPLES, min=4, max=MAX_SAMPLES,
                             tooltip="Calibration noises (a share is held out)."),
                *calibration_inputs(SIGMA_OPTIONS),
                batch_size_input(),
            ],
            outputs=[
                io.Sigmas.Output(display_name="SIGMAS"),
                *text_outputs("Sigmas LML Calibrated",
                              "Held-out error against the best scheduler's sigmas, and the "
                              "model calls spent."),
            ],
        )

    @classmethod
    def validate_inputs(cls, sampler_name=None, scheduler=None, cfg=None, batch_size=None):
        # ComfyUI 0.3.75 does not check V3 combos itself, and its bounds check lets NaN through.
        return check_number(cls, "cfg", cfg) or check_count("batch_size", batch_size) or validate(
            {"sampler_name": (sampler_name, comfy.samplers.KSampler.SAMPLERS),
             "scheduler": (scheduler, comfy.samplers.KSampler.SCHEDULERS)})

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, cfg, sampler_name,
                scheduler, steps, samples, **options) -> io.NodeOutput:
        batch_size = options.get("batch_size", AUTO_BATCH)
        message = cls.validate_inputs(sampler_name, scheduler, cfg, batch_size)
        if message is not True:  # a linked value: known only now
            raise ValueError(message)
        calibration, cached = run_calibration(
            model, positive, negative, latent_image, seed, cfg, scheduler, steps, samples,
            {k: options[k] for k in SIGMA_OPTIONS}, sigmas_for=sampler_name,
            schedulers=comfy.samplers.KSampler.SCHEDULERS, batch_size=batch_size)
        sigmas = torch.tensor(calibration.sigmas, dtype=torch.float32)
        return fitted_outputs(sigmas, calibration, scheduler, cfg, cached)


class SigmasLMLCalibrated(io.ComfyNode):
    """A saved sigma calibration (LML Calibrate Sigmas' JSON) as SIGMAS."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SigmasLMLCalibrated",
            display_name="Sigmas LML Calibrated",
            category=samplers_category(),
            description=(
                "The fitted timesteps of a saved calibration (the JSON text LML Calibrate "
                "Sigmas outputs) as SIGMAS, for SamplerCustom / SamplerCustomAdvanced; the "
                "model is checked against the one the calibration was made for."),
            inputs=[io.Model.Input("model"),
                    io.String.Input("calibration", multiline=True, default="",
                                    tooltip="LML Calibrate Sigmas' calibration output (JSON).")],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def validate_inputs(cls, calibration=None):
        return check_calibration_text(calibration)

    @classmethod
    def execute(cls, model, calibration) -> io.NodeOutput:
        return io.NodeOutput(calibrated_sigmas(Calibration.from_json(calibration), model))
