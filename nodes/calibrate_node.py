"""LMLCalibrate ("LML Calibrate") and SamplerLMLCalibrated ("Sampler LML Calibrated"): an LML
sampler fitted to the user's own model, schedule and guidance (lml_core.calibrate).

LML Calibrate runs the fit inside ComfyUI's own sampling path: ``comfy.sample.sample_custom``
with a KSAMPLER whose function is the calibration, so model loading, patches, conditioning and
CFG are exactly those of a KSampler with the same inputs.  The calibration noises come from
``seed`` (``samples`` latents of the input latent's size); the result is cached on disk under
ComfyUI's user folder (calibration_cache: keyed by the model with its patches and hooks, the
conditioning and every setting), so a restart does not refit.  Sampler LML Calibrated turns
a saved calibration (its JSON text) back into a SAMPLER, so a shared workflow runs without
calibrating.
"""

from __future__ import annotations

import math
from dataclasses import replace

import comfy.model_management
import comfy.samplers
import comfy.utils
from comfy_api.latest import io

from ..lml_core import (
    CALIBRATE_DEFAULTS,
    CALIBRATION_BASES,
    Calibration,
    calibrate,
    calibrate_sigmas,
)
from . import calibration_cache
from .bridge import (
    auto_batch_size,
    calibrated_sampler,
    calibration_samplers,
    deterministic_counterpart,
    empty_latent_fixed,
    ksampler_sigmas,
    latents_per_noise,
    run_ksampler,
)
from .lm_settings import advanced, check_number, validate
from .sampler_nodes import ksampler_category, samplers_category

DEFAULT_SAMPLES = 32  # the noises the benchmark's targets were measured with
# LML Calibrate's field: every host scheduler x deterministic sampler (the default), or the
# LML bases on the node's scheduler alone (cheaper: no built-in pair is measured or kept).
FIELDS = ("all pairs", "this scheduler")


# The fit's settings LML Calibrate exposes (the rest of CALIBRATE_DEFAULTS keep their defaults).
NODE_OPTIONS = ("base", "history", "move_timesteps", "heldout", "iterations", "regularization",
                "trajectory", "reference_steps")


def calibration_inputs(names=NODE_OPTIONS) -> list[io.Input]:
    """The fit's settings ``names`` (defaults from lml_core.CALIBRATE_DEFAULTS), all advanced."""
    d = CALIBRATE_DEFAULTS
    inputs = {
        "base": lambda: io.Combo.Input(
            "base", options=["auto", *CALIBRATION_BASES], default=d["base"],
            tooltip="The analytic solver the corrections start from (zero corrections = that "
                    "solver): auto picks the best of euler, ipndm and ipndm_v on the "
                    "calibration noise."),
        "history": lambda: io.Int.Input(
            "history", default=d["history"], min=1, max=4,
            tooltip="Previous step directions each step's correction may combine."),
        "move_timesteps": lambda: io.Boolean.Input(
            "move_timesteps", default=d["move_timesteps"],
            tooltip="Also fit the timesteps (the first sigma stays)."),
        "heldout": lambda: io.Float.Input(
            "heldout", default=d["heldout"], min=0.05, max=0.9, step=0.05,
            tooltip="Share of the calibration noises held out to decide what is kept (early "
                    "stopping, the choice among the candidates)."),
        "iterations": lambda: io.Int.Input(
            "iterations", default=d["iterations"], min=0, max=200,
            tooltip="Levenberg-Marquardt steps at most."),
        "regularization": lambda: io.Float.Input(
            "regularization", default=d["regularization"], min=0.0, max=100.0, step=0.0001,
            round=False, tooltip="How strongly the fit is pulled toward its start (the weight "
                                 "of the corrections' and timestep shifts' squares)."),
        "trajectory": lambda: io.Float.Input(
            "trajectory", default=d["trajectory"], min=0.0, max=100.0, step=0.1,
            tooltip="Weight of the states on the way in the objective (0: the final sample "
                    "only; keeps the fit from compositions that drift)."),
        "reference_steps": lambda: io.Int.Input(
            "reference_steps", default=d["reference_steps"], min=4, max=1000,
            tooltip="RK4 steps of the converged reference (4 model calls each)."),
    }
    return [advanced(inputs[name]()) for name in names]


AUTO_BATCH = 0  # batch_size's "auto": noises per model call from ComfyUI's model management
MAX_SAMPLES = 1024  # the samples widget's maximum (and batch_size's)


def batch_size_input() -> io.Input:
    """The calibrating nodes' batch_size: advanced and optional (the last input: workflows and
    API prompts saved before it load with auto)."""
    return advanced(io.Int.Input(
        "batch_size", default=AUTO_BATCH, min=0, max=MAX_SAMPLES, optional=True,
        tooltip="Calibration noises per model call. 0 = auto: as many as ComfyUI's model "
                "management says fit in the free memory (the report says how many); a number: "
                "that many (lower it if the calibration runs out of memory). The calibration "
                "is the same either way."))


def checked_batch_size(value) -> int:
    """batch_size as a whole number >= 0 (0: auto), or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or (
            int(value) != value or not 0 <= value <= MAX_SAMPLES):
        raise ValueError(f"batch_size must be a whole number from 0 (auto) to {MAX_SAMPLES}, "
                         f"got {value!r}")
    return int(value)


def check_batch_size(value) -> str | None:
    """validate_inputs' check of batch_size: None (fine, or linked: checked when it runs), or
    the message naming it (ComfyUI skips its own bounds check of an input validate_inputs
    names)."""
    if value is None:
        return None
    try:
        checked_batch_size(value)
    except ValueError as error:
        return str(error)
    return None


def fit_head_inputs() -> list[io.Input]:
    """What every calibrating node fits for: model, conditioning, latent size, seed, cfg."""
    return [
        io.Model.Input("model"),
        io.Conditioning.Input("positive"),
        io.Conditioning.Input("negative"),
        io.Latent.Input("latent_image", tooltip="Sets the latent size of the calibration "
                                                "noises."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                     control_after_generate=False,
                     tooltip="Seed of the calibration noises (pick another seed for the "
                             "images you judge it by)."),
        io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01),
    ]


def text_outputs(for_node: str, report: str) -> list[io.Output]:
    """The calibration (JSON, for ``for_node``) and the report outputs."""
    return [io.String.Output(display_name="calibration",
                             tooltip=f"The calibration as JSON, for {for_node}."),
            io.String.Output(display_name="report", tooltip=report)]


def check_calibration_text(calibration) -> bool | str:
    """validate_inputs of the nodes that read a saved calibration: True, or lml_core's message
    naming the field (None: linked, checked when it runs)."""
    if calibration is None:
        return True
    try:
        Calibration.from_json(calibration)
    except ValueError as error:
        return str(error)
    return True


def fitted_outputs(first, calibration: Calibration, scheduler, cfg, cache_note):
    """A calibrating node's outputs: ``first``, the calibration text and the report (also
    shown on the node and kept in the prompt's history)."""
    text = calibration.to_json()
    report = calibration_report(calibration, scheduler, cfg, cache_note)
    return io.NodeOutput(first, text, report, ui={"lml_calibration": [text], "text": [report]})


def calibration_report(calibration: Calibration, scheduler: str, cfg: float,
                       cache_note: str | None) -> str:
    r, fit = calibration.report, calibration.fitted_on
    heldout = r["heldout_rms"]
    starts = r["heldout_rms_bases"]
    best_name = min(starts, key=starts.get)
    runs = (f"LML on {calibration.base}" if calibration.sampler == "lml"
            else f"{calibration.sampler} on its own timesteps")
    lines = [
        f"LML Calibrate: {fit['steps']} steps ({scheduler}, sigma {fit['sigma_max']:.4g} -> "
        f"{fit['sigma_min']:.4g} -> 0), cfg {cfg:g}, {fit['model_kind']} model",
        f"chosen: {r.get('chosen', runs)} (runs {runs})",
        f"held-out error (RMS vs a converged solution, {r['samples']['heldout']} noises not "
        f"fitted on; they chose among the candidates): {heldout:.4g}",
        "unchanged starts on the same noise: " + ", ".join(
            f"{k} {v:.4g}" for k, v in starts.items())
        + f"; best {best_name} (calibrated = {heldout / starts[best_name]:.2f}x its error)",
        f"fit: {r['iterations']} Levenberg-Marquardt steps on {r['samples']['fit']} noises; "
        f"cost {r['model_calls']} model calls ({r['model_evaluations']} per-sample "
        f"evaluations), {r['seconds']:.1f} s",
    ]
    if "batch" in r:
        size = r["batch"]["size"]
        lines.append(f"batch: {size} noise{'s' if size != 1 else ''} per model call "
                     f"({r['batch']['why']})")
    if not r["calibrated"]:
        lines.append(f"no fit gained on the held-out noise: the sampler is {r.get('chosen')} "
                     "unchanged")
    if cache_note:
        lines.append(cache_note)
    return "\n".join(lines)


def scheduler_sigmas(model, scheduler: str, steps: int, sampler="euler") -> list[float]:
    """KSampler's sigmas for ``sampler``, ``scheduler`` and ``steps``, or a ValueError naming
    the scheduler where they cannot be calibrated (kl_optimal at 1 step gives NaN)."""
    sigmas = [float(s) for s in ksampler_sigmas(model, steps, sampler, scheduler)]
    if len(sigmas) < 2 or sigmas[-1] != 0 or not all(math.isfinite(s) for s in sigmas) or any(
            a <= b for a, b in zip(sigmas[:-1], sigmas[1:])):
        shown = ", ".join(f"{s:.6g}" for s in sigmas[:12]) + (", ..." if len(sigmas) > 12 else "")
        raise ValueError(f"LML Calibrate: the {scheduler} scheduler gives [{shown}] for {steps} "
                         "step(s), not sigmas that decrease strictly to 0; pick another "
                         "scheduler or step count")
    return sigmas


def run_calibration(model, positive, negative, latent_image, seed, cfg, scheduler, steps,
                    samples, options, schedulers=None, samplers=None, sigmas_for=None,
                    batch_size=AUTO_BATCH):
    """(Calibration, the report's cache line or None).  ``schedulers``, ``samplers``: host
    scheduler and one-call-per-step deterministic sampler names the fit measures and may
    start from (default: ``scheduler`` alone, no built-in sampler).  ``sigmas_for``: a host
    sampler name: fit only its timesteps (lml_core.calibrate_sigmas) instead.  The fit runs
    through comfy.sample.sample_custom, with one progress bar (per-sample model evaluations) and
    Cancel checked after every model call; the calibration's fitted_on names the scheduler.
    ``batch_size``: noises per model call, or 0 (auto: ``bridge.auto_batch_size`` once the model
    is loaded); the report's ``batch`` says which and why.  It is not in the cache key: the
    calibration does not depend on it."""
    batch_size = checked_batch_size(batch_size)
    latent = empty_latent_fixed(model, latent_image)
    batch = latent[:1].repeat((samples,) + (1,) * (latent.ndim - 1))
    sigmas = scheduler_sigmas(model, scheduler, steps)
    schedules = {scheduler: sigmas}
    for name in schedulers or []:
        try:
            schedules[name] = scheduler_sigmas(model, name, steps)
        except ValueError:  # this scheduler cannot give these steps: not in the field
            continue
    field = calibration_samplers(steps)
    functions = {name: field[name][0] for name in (samplers or []) if name in field}
    # KSampler's sigmas where a sampler gets other ones: its discard-penultimate rule, and
    # fewer steps for a sampler of several model calls per step (the same calls).
    discard = comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    own = {}
    for name in functions:
        if name in discard or field[name][1] != steps:
            own[name] = {}
            for s in schedules:
                try:
                    own[name][s] = scheduler_sigmas(model, s, field[name][1], name)
                except ValueError:  # no usable schedule at its steps: off this scheduler
                    continue
    # format 2: calibrations record the whole schedule, the latent shape, the scheduler.
    settings = {"format": "lml-calibrate-node/2", "seed": seed, "cfg": cfg,
                "scheduler": scheduler, "steps": steps, "samples": samples,
                "latent": list(batch.shape[1:]), "sigmas": sigmas,
                "schedulers": sorted(schedules), "samplers": sorted(functions),
                "sigmas_for": sigmas_for, **options}
    # The latent's values too: sampling starts from latent + noise.
    path, note = calibration_cache.locate(model, positive, negative, latent[:1], settings)
    cached = calibration_cache.load(path) if path is not None else None
    if cached is not None:
        return cached, f"loaded from the cache: {path}"

    pbar = comfy.utils.ProgressBar(1)
    result = {}

    def progress(done, planned):
        comfy.model_management.throw_exception_if_processing_interrupted()
        pbar.update_absolute(min(done, planned), planned)

    def fit(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        if batch_size == AUTO_BATCH:  # the model is loaded now: what is free is what is left
            rows, why = auto_batch_size(model.model, x, latents_per_noise(
                cfg, (extra_args or {}).get("model_options")))
        else:
            rows, why = batch_size, "set by batch_size"
        if sigmas_for is not None:
            fitted = calibrate_sigmas(
                model_k, x, sigmas, deterministic_counterpart(sigmas_for),
                extra_args=extra_args, sampler_name=sigmas_for, schedules=schedules,
                progress=progress, batch_size=rows, **options)
        else:
            fitted = calibrate(model_k, x, sigmas, extra_args=extra_args, schedules=schedules,
                               samplers=functions, sampler_schedules=own, progress=progress,
                               batch_size=rows, **options)
        result["calibration"] = replace(
            fitted, fitted_on={**fitted.fitted_on, "scheduler": scheduler},
            report={**fitted.report, "batch": {"size": rows, "why": why}})
        return x

    run_ksampler(model, {"samples": batch}, seed, steps, cfg, comfy.samplers.KSAMPLER(fit),
                 "euler", scheduler, positive, negative, callback=lambda *_: None)
    calibration = result["calibration"]
    if path is not None:
        note = calibration_cache.save(path, calibration)
    return calibration, note


class LMLCalibrate(io.ComfyNode):
    """Fits the calibrated LML sampler to a model, conditioning, cfg, scheduler and steps."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LMLCalibrate",
            display_name="LML Calibrate",
            category=ksampler_category(),
            description=(
                "Fits an LML sampler to your model, prompt, cfg, scheduler and step count: the "
                "step corrections (in the subspace of the previous directions) and the "
                "timesteps are fitted by Levenberg-Marquardt so that the sampler's result "
                "matches a converged solution from the same noise. Outputs a SAMPLER for "
                "SamplerCustom / SamplerCustomAdvanced (use the same scheduler and steps) and "
                "the calibration as text for Sampler LML Calibrated."),
            inputs=[
                *fit_head_inputs(),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               default="karras"),
                io.Int.Input("steps", default=8, min=1, max=100,
                             tooltip="The step count the sampler is fitted for (4-10 is where "
                                     "it pays)."),
                io.Int.Input("samples", default=DEFAULT_SAMPLES, min=4, max=MAX_SAMPLES,
                             tooltip="Calibration noises (a share is held out); the cost grows "
                                     "with it."),
                *calibration_inputs(),
                advanced(io.Combo.Input(  # optional: API prompts saved before it still run
                    "field", options=list(FIELDS), default=FIELDS[0], optional=True,
                    tooltip="all pairs: measure every sampler x scheduler and return the best "
                            "of the LML fit, a fitted built-in and the best pair; this "
                            "scheduler: only the LML fit on your scheduler (cheaper).")),
                batch_size_input(),
            ],
            outputs=[
                io.Sampler.Output(display_name="SAMPLER"),
                *text_outputs("Sampler LML Calibrated",
                              "The candidate chosen, its held-out error against the unchanged "
                              "starts, and the model calls spent."),
            ],
        )

    @classmethod
    def validate_inputs(cls, scheduler=None, base=None, cfg=None, field=None, batch_size=None):
        # ComfyUI 0.3.75 does not check V3 combos itself, and its bounds check lets NaN through.
        return check_number(cls, "cfg", cfg) or check_batch_size(batch_size) or validate(
            {"scheduler": (scheduler, comfy.samplers.KSampler.SCHEDULERS),
             "base": (base, ("auto", *CALIBRATION_BASES)), "field": (field, FIELDS)})

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, cfg, scheduler, steps,
                samples, **options) -> io.NodeOutput:
        field = options.pop("field", FIELDS[0])
        batch_size = options.pop("batch_size", AUTO_BATCH)
        message = cls.validate_inputs(scheduler, options.get("base"), cfg, field, batch_size)
        if message is not True:  # a linked value: known only now
            raise ValueError(message)
        # The field: every host scheduler and deterministic sampler at the same model calls.
        every = field == FIELDS[0]
        calibration, cached = run_calibration(
            model, positive, negative, latent_image, seed, cfg, scheduler, steps, samples,
            options, schedulers=comfy.samplers.KSampler.SCHEDULERS if every else None,
            samplers=list(calibration_samplers(steps)) if every else None,
            batch_size=batch_size)
        return fitted_outputs(calibrated_sampler(calibration), calibration, scheduler, cfg,
                              cached)


class SamplerLMLCalibrated(io.ComfyNode):
    """A saved calibration (LML Calibrate's JSON) as a SAMPLER."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SamplerLMLCalibrated",
            display_name="Sampler LML Calibrated",
            category=samplers_category(),
            description=(
                "The calibrated LML sampler from a saved calibration (the JSON text LML "
                "Calibrate outputs), for SamplerCustom / SamplerCustomAdvanced with the "
                "scheduler and steps it was fitted for."),
            inputs=[io.String.Input("calibration", multiline=True, default="",
                                    tooltip="LML Calibrate's calibration output (JSON).")],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def validate_inputs(cls, calibration=None):
        return check_calibration_text(calibration)

    @classmethod
    def execute(cls, calibration) -> io.NodeOutput:
        return io.NodeOutput(calibrated_sampler(Calibration.from_json(calibration)))

