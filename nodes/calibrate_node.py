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

``steps`` takes several step counts ("4,6,8"): one fit each from the same noises, sharing the
converged reference (lml_core.calibrate_steps); the text then holds one calibration per step
count and the SAMPLER runs the one of the schedule it is given.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import comfy.model_management
import comfy.samplers
import comfy.utils
from comfy_api.latest import io

from ..lml_core import (
    CALIBRATE_DEFAULTS,
    CALIBRATION_BASES,
    Calibration,
    calibrate_sigmas,
    calibrate_steps,
    calibrations_from_json,
    calibrations_to_json,
)
from ..lml_core.calibration import calibration_list, step_counts
from ..lml_core.calibration_text import MAX_SET
from ..lml_core.field import lml_start_name
from . import calibration_cache
from .bridge import (
    auto_batch_size,
    calibrated_sampler,
    calibration_samplers,
    compute_dtype,
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
# LML Calibrate's step counts: each from 1 to MAX_STEPS (the widget's max when steps was an INT),
# at most MAX_SET of them (lml_core's set of calibrations).
MAX_STEPS = 100
STEPS_EXAMPLE = "e.g. 8, or 4,6,8"


def step_counts_of(steps) -> list[int]:
    """LML Calibrate's ``steps`` as step counts, ascending: one (an int, as API prompts saved
    when steps was an INT widget give it, or text "8") or several separated by commas
    ("4,6,8"), each a whole number from 1 to MAX_STEPS, none twice, at most MAX_SET; else a
    ValueError naming steps."""
    if isinstance(steps, int) and not isinstance(steps, bool):
        tokens = [str(steps)]
    elif isinstance(steps, str):
        tokens = steps.split(",")
    else:
        raise ValueError(f"steps must be one step count or several separated by commas "
                         f"({STEPS_EXAMPLE}), got {type(steps).__name__}")
    if not "".join(tokens).strip():
        raise ValueError(f"steps is empty: give one step count or several separated by commas "
                         f"({STEPS_EXAMPLE})")
    counts = []
    for token in (t.strip() for t in tokens):
        if not token:
            raise ValueError(f"steps has an empty entry in {shorter(steps)}: separate the step "
                             f"counts by single commas ({STEPS_EXAMPLE})")
        if not re.fullmatch(r"-?[0-9]+", token):
            raise ValueError(f"steps: {shorter(token)} is not a whole number ({STEPS_EXAMPLE})")
        value = int(token)
        if not 1 <= value <= MAX_STEPS:
            raise ValueError(f"steps: {shorter(token)} is out of range (1 to {MAX_STEPS})")
        if value in counts:
            raise ValueError(f"steps: {value} is given twice (one calibration per step count)")
        counts.append(value)
    if len(counts) > MAX_SET:
        raise ValueError(f"steps: at most {MAX_SET} step counts, got {len(counts)}")
    return sorted(counts)


def shorter(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# The fit's settings LML Calibrate exposes (the rest of CALIBRATE_DEFAULTS keep their defaults).
NODE_OPTIONS = ("base", "history", "move_timesteps", "heldout", "iterations", "regularization",
                "trajectory", "reference_steps")


def calibration_inputs(names=NODE_OPTIONS) -> list[io.Input]:
    """The fit's settings ``names`` (defaults from lml_core.CALIBRATE_DEFAULTS), all advanced."""
    d = CALIBRATE_DEFAULTS
    inputs = {
        "base": lambda: io.Combo.Input(
            "base", options=["auto", *CALIBRATION_BASES], default=d["base"],
            tooltip="The solver the corrections start from (zero corrections = that solver): "
                    "auto fits from the best of euler, ipndm and ipndm_v and from the best "
                    "built-in sampler's own steps on the calibration noise, and keeps the "
                    "better; a named one: that solver only."),
        "history": lambda: io.Int.Input(
            "history", default=d["history"], min=1, max=4,
            tooltip="Previous step directions each step's correction may combine."),
        "move_timesteps": lambda: io.Boolean.Input(
            "move_timesteps", default=d["move_timesteps"],
            tooltip="Also fit the timesteps (the first sigma stays)."),
        "heldout": lambda: io.Float.Input(
            "heldout", default=d["heldout"], min=0.05, max=0.7, step=0.05,
            tooltip="Share of the calibration noises held out to decide what is kept (early "
                    "stopping, the choice among the candidates). Another quarter only tests "
                    "(the report's test error); the rest fit."),
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
                    "only). Lower fits the typical sample closer; higher keeps more samples "
                    "in the reference's mode on multimodal data (1 was the default before "
                    "0.3: the pack's docs/calibration_options.md)."),
        "reference_steps": lambda: io.Int.Input(
            "reference_steps", default=d["reference_steps"], min=4, max=1000,
            tooltip="Steps of the converged reference (one model call each)."),
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


# The calibrating nodes' counts of noises: what 0 means for each.
COUNTS = {"batch_size": "auto", "jacobian_rows": "all"}


def checked_count(name: str, value) -> int:
    """The count ``name`` (COUNTS) as a whole number from 0 to MAX_SAMPLES, or a ValueError
    naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or (
            int(value) != value or not 0 <= value <= MAX_SAMPLES):
        raise ValueError(f"{name} must be a whole number from 0 ({COUNTS[name]}) to "
                         f"{MAX_SAMPLES}, got {value!r}")
    return int(value)


def check_count(name: str, value) -> str | None:
    """validate_inputs' check of the count ``name``: None (fine, or linked: checked when it
    runs), or the message naming it (ComfyUI skips its own bounds check of an input
    validate_inputs names)."""
    if value is None:
        return None
    try:
        checked_count(name, value)
    except ValueError as error:
        return str(error)
    return None


JACOBIAN_ROWS = CALIBRATE_DEFAULTS["jacobian_rows"]


def jacobian_rows_input() -> io.Input:
    """LML Calibrate's jacobian_rows: advanced and optional, after batch_size (workflows and
    API prompts saved before it load with the default)."""
    return advanced(io.Int.Input(
        "jacobian_rows", default=JACOBIAN_ROWS, min=0, max=MAX_SAMPLES, optional=True,
        tooltip="Fitting noises each Levenberg-Marquardt step's Jacobian is taken on (other "
                "ones each step; 0: all of them). 0 fits closer at 1.6-1.8x the model calls "
                "(up to 3x at 10 steps) in the same memory, and with more samples (128) it "
                "is what makes the extra noises pay: measured in the pack's "
                "docs/calibration_options.md."))


LINEAR_FITS = CALIBRATE_DEFAULTS["linear_fits"]


def linear_fits_input() -> io.Input:
    """LML Calibrate's linear_fits: advanced and optional, after jacobian_rows (workflows and
    API prompts saved before it load with the default, on)."""
    return advanced(io.Boolean.Input(
        "linear_fits", default=LINEAR_FITS, optional=True,
        tooltip="On (the default): the fit that starts from the best built-in sampler's own "
                "steps fits that sampler's exact steps with every coefficient free, instead "
                "of their LML form. Closer on a network at the same model calls; on the "
                "benchmark's exact mixtures the typical sample is closer too, but more "
                "samples end in another mode (the pack's docs/calibration_options.md). Only "
                "with field 'all pairs' and base auto (elsewhere there are no such fits)."))


def check_linear_fits(value) -> str | None:
    """None (a boolean, or linked: checked when it runs) or the message naming linear_fits.
    With field 'this scheduler' or a fixed base there is no fit from a built-in's steps, so
    either value runs the same fit (it is the default: no refusal there)."""
    if value is None or isinstance(value, bool):
        return None
    return f"linear_fits must be true or false, got {value!r}"


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


def check_calibration_text(calibration, read=Calibration.from_json) -> bool | str:
    """validate_inputs of the nodes that read a saved calibration with ``read``: True, or
    lml_core's message naming the field (None: linked, checked when it runs)."""
    if calibration is None:
        return True
    try:
        read(calibration)
    except ValueError as error:
        return str(error)
    return True


def fitted_outputs(first, calibrations, scheduler, cfg, cache_note):
    """A calibrating node's outputs: ``first``, the calibration text (one calibration, or a
    list: one per step count, lml_core's set) and the report (also shown on the node and kept
    in the prompt's history)."""
    items = calibration_list(calibrations)
    text = calibrations_to_json(items)
    if len(items) == 1:
        report = calibration_report(items[0], scheduler, cfg, cache_note)
    else:
        counts = step_counts([c.fitted_on["steps"] for c in items])
        report = "\n\n".join(
            [f"LML Calibrate: {counts} steps, one calibration each from the same noises (the "
             "converged reference computed once); Sampler LML Calibrated runs the one of its "
             "schedule's step count"]
            + [calibration_report(c, scheduler, cfg, None) for c in items]
            + ([cache_note] if cache_note else []))
    return io.NodeOutput(first, text, report, ui={"lml_calibration": [text], "text": [report]})


def calibration_report(calibration: Calibration, scheduler: str, cfg: float,
                       cache_note: str | None) -> str:
    r, fit = calibration.report, calibration.fitted_on
    heldout = r["heldout_rms"]
    starts = r["heldout_rms_bases"]
    best_name = min(starts, key=starts.get)
    start = lml_start_name(r.get("start", ""))
    runs = (f"{calibration.sampler} on its own timesteps" if calibration.sampler != "lml"
            else f"LML on {calibration.base}" if start in (None, calibration.base)
            else f"LML from {start}'s steps, saved as {calibration.base} + corrections")
    lines = [
        f"LML Calibrate: {fit['steps']} steps ({scheduler}, sigma {fit['sigma_max']:.4g} -> "
        f"{fit['sigma_min']:.4g} -> 0), cfg {cfg:g}, {fit['model_kind']} model",
        f"chosen: {r.get('chosen', runs)} (runs {runs})",
        f"held-out error (RMS vs a converged solution, {r['samples']['heldout']} noises not "
        f"fitted on; they chose among the candidates): {heldout:.4g}",
        "unchanged starts on the same noise: " + ", ".join(
            f"{k} {v:.4g}" for k, v in starts.items())
        + f"; best {best_name} (calibrated = {heldout / starts[best_name]:.2f}x its error)",
        *test_lines(r),
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
    if "reference_shared_from" in r:
        lines.append(f"reference: shared with the {r['reference_shared_from']}-step fit (its "
                     "model calls are counted there)")
    if cache_note:
        lines.append(cache_note)
    return "\n".join(lines)


def test_lines(r) -> list[str]:
    """The report's test line: the error on the noises that chose nothing (none in a
    calibration made before the test split, or with test 0)."""
    test, pair = r.get("test_rms"), r.get("test_rms_best_pair")
    if test is None:
        return []
    n = r["samples"]["test"]
    line = (f"test error ({n} noise{'s' if n != 1 else ''} that neither fitted nor chose: what "
            f"new noise can expect): {test:.4g}")
    if pair:
        line += f"; the best pair unchanged {pair:.4g} (calibrated = {test / pair:.2f}x)"
    return [line]


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
    """(Calibration, the report's cache line or None) of one step count ``steps``:
    ``run_calibrations`` with ``[steps]``."""
    (calibration,), note = run_calibrations(
        model, positive, negative, latent_image, seed, cfg, scheduler, [steps], samples, options,
        schedulers, samplers, sigmas_for, batch_size)
    return calibration, note


class StepField:
    """The field of one step count: the scheduler's sigmas, the schedules ({name: sigmas}) and
    built-in samplers ({name: function}) measured, and the samplers' own sigmas where KSampler
    gives them others (``own``: {sampler: {schedule: sigmas}})."""

    def __init__(self, model, scheduler, steps, schedulers, samplers):
        self.steps = steps
        self.sigmas = scheduler_sigmas(model, scheduler, steps)
        self.schedules = {scheduler: self.sigmas}
        for name in schedulers or []:
            try:
                self.schedules[name] = scheduler_sigmas(model, name, steps)
            except ValueError:  # this scheduler cannot give these steps: not in the field
                continue
        field = calibration_samplers(steps)
        self.functions = {name: field[name][0] for name in (samplers or []) if name in field}
        # KSampler's sigmas where a sampler gets other ones: its discard-penultimate rule, and
        # fewer steps for a sampler of several model calls per step (the same calls).
        discard = comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        self.own = {}
        for name in self.functions:
            if name in discard or field[name][1] != steps:
                self.own[name] = {}
                for s in self.schedules:
                    try:
                        self.own[name][s] = scheduler_sigmas(model, s, field[name][1], name)
                    except ValueError:  # no usable schedule at its steps: off this scheduler
                        continue


def run_calibrations(model, positive, negative, latent_image, seed, cfg, scheduler, steps,
                     samples, options, schedulers=None, samplers=None, sigmas_for=None,
                     batch_size=AUTO_BATCH):
    """(one Calibration per step count of ``steps``, ascending; the report's cache line or
    None).  ``schedulers``, ``samplers``: host scheduler and one-call-per-step deterministic
    sampler names the fit measures and may start from (default: ``scheduler`` alone, no
    built-in sampler; at each step count those that run there).  ``sigmas_for``: a host
    sampler name: fit only its timesteps (lml_core.calibrate_sigmas; one step count) instead.
    The fit runs through comfy.sample.sample_custom once, from one set of noises for every
    step count (lml_core.calibrate_steps: one reference), with one progress bar (per-sample
    model evaluations) and Cancel checked after every model call; each calibration's
    fitted_on names the scheduler.  One step count is cached under the key it always had.
    ``batch_size``: noises per model call, or 0 (auto: ``bridge.auto_batch_size`` once the model
    is loaded); each report's ``batch`` says which and why.  It is not in the cache key: the
    calibration does not depend on it."""
    batch_size = checked_count("batch_size", batch_size)
    counts = sorted(steps)
    if sigmas_for is not None and len(counts) != 1:
        raise ValueError(f"steps: fitting {sigmas_for}'s sigmas takes one step count, got "
                         f"{counts}")
    latent = empty_latent_fixed(model, latent_image)
    batch = latent[:1].repeat((samples,) + (1,) * (latent.ndim - 1))
    fields = [StepField(model, scheduler, n, schedulers, samplers) for n in counts]
    for field in fields[1:]:  # the noises are drawn at the first sigma: one for every count
        if not math.isclose(field.sigmas[0], fields[0].sigmas[0], rel_tol=1e-4):
            raise ValueError(f"steps: the {scheduler} scheduler starts at sigma "
                             f"{fields[0].sigmas[0]:.6g} for {counts[0]} steps and "
                             f"{field.sigmas[0]:.6g} for {field.steps}; calibrate those step "
                             "counts separately")
    one = len(fields) == 1

    def each(read):
        return read(fields[0]) if one else [read(f) for f in fields]

    # format 2: calibrations record the whole schedule, the latent shape, the scheduler.
    settings = {"format": "lml-calibrate-node/2", "seed": seed, "cfg": cfg,
                "scheduler": scheduler, "steps": counts[0] if one else counts,
                "samples": samples, "latent": list(batch.shape[1:]),
                "sigmas": each(lambda f: f.sigmas),
                "schedulers": each(lambda f: sorted(f.schedules)),
                "samplers": each(lambda f: sorted(f.functions)),
                "sigmas_for": sigmas_for, **options}
    # The latent's values too: sampling starts from latent + noise.
    path, note = calibration_cache.locate(model, positive, negative, latent[:1], settings)
    cached = calibration_cache.load(path) if path is not None else None
    if cached is not None and [c.fitted_on["steps"] for c in cached] == counts:
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
        precision = {"model_dtype": compute_dtype(model.model), **options}
        if sigmas_for is not None:
            fitted = [calibrate_sigmas(
                model_k, x, sigmas, deterministic_counterpart(sigmas_for),
                extra_args=extra_args, sampler_name=sigmas_for, schedules=fields[0].schedules,
                progress=progress, batch_size=rows, **precision)]
        else:
            given = {counts[0]: sigmas}  # the run's own; the others as KSampler gives them
            fitted = calibrate_steps(
                model_k, x, {f.steps: given.get(f.steps, f.sigmas) for f in fields},
                extra_args=extra_args, progress=progress, per_steps={
                    f.steps: {"schedules": f.schedules, "samplers": f.functions,
                              "sampler_schedules": f.own} for f in fields},
                batch_size=rows, **precision)
        result["calibrations"] = [
            replace(c, fitted_on={**c.fitted_on, "scheduler": scheduler},
                    report={**c.report, "batch": {"size": rows, "why": why}}) for c in fitted]
        return x

    run_ksampler(model, {"samples": batch}, seed, counts[0], cfg,
                 comfy.samplers.KSAMPLER(fit), "euler", scheduler, positive, negative,
                 callback=lambda *_: None)
    calibrations = result["calibrations"]
    if path is not None:
        note = calibration_cache.save(path, calibrations)
    return calibrations, note


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
                "the calibration as text for Sampler LML Calibrated. Several step counts "
                "(steps 4,6,8) are fitted from the same noises, one calibration each."),
            inputs=[
                *fit_head_inputs(),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               default="karras"),
                io.String.Input("steps", default="8",
                                tooltip="The step count the sampler is fitted for (4-10 is "
                                        "where it pays), or several separated by commas "
                                        "(4,6,8: one fit each from the same noises; the "
                                        "sampler runs the one of the steps it is given)."),
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
                jacobian_rows_input(),
                linear_fits_input(),
            ],
            outputs=[
                io.Sampler.Output(display_name="SAMPLER"),
                *text_outputs("Sampler LML Calibrated",
                              "The candidate chosen, its held-out error against the unchanged "
                              "starts, and the model calls spent."),
            ],
        )

    @classmethod
    def validate_inputs(cls, scheduler=None, base=None, cfg=None, field=None, steps=None,
                        batch_size=None, jacobian_rows=None, linear_fits=None):
        # ComfyUI 0.3.75 does not check V3 combos itself, and its bounds check lets NaN through.
        message = check_number(cls, "cfg", cfg) or check_count("batch_size", batch_size) or (
            check_count("jacobian_rows", jacobian_rows)) or check_linear_fits(
            linear_fits) or validate(
            {"scheduler": (scheduler, comfy.samplers.KSampler.SCHEDULERS),
             "base": (base, ("auto", *CALIBRATION_BASES)), "field": (field, FIELDS)})
        if message is True and steps is not None:
            try:
                step_counts_of(steps)
            except ValueError as error:
                return str(error)
        return message

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, cfg, scheduler, steps,
                samples, **options) -> io.NodeOutput:
        field = options.pop("field", FIELDS[0])
        batch_size = options.pop("batch_size", AUTO_BATCH)
        jacobian_rows = options.pop("jacobian_rows", JACOBIAN_ROWS)
        linear_fits = options.pop("linear_fits", LINEAR_FITS)
        message = cls.validate_inputs(scheduler, options.get("base"), cfg, field, steps,
                                      batch_size, jacobian_rows, linear_fits)
        if message is not True:  # a linked value: known only now
            raise ValueError(message)
        # The defaults are left out: the cache key they always had.
        if checked_count("jacobian_rows", jacobian_rows) != JACOBIAN_ROWS:
            options["jacobian_rows"] = int(jacobian_rows)
        if linear_fits != LINEAR_FITS:
            options["linear_fits"] = linear_fits
        counts = step_counts_of(steps)
        # The field: every host scheduler and deterministic sampler at the same model calls
        # (at each step count, those that run there).
        every = field == FIELDS[0]
        calibrations, cached = run_calibrations(
            model, positive, negative, latent_image, seed, cfg, scheduler, counts, samples,
            options, schedulers=comfy.samplers.KSampler.SCHEDULERS if every else None,
            samplers=list(calibration_samplers(counts[-1])) if every else None,
            batch_size=batch_size)
        sampler = calibrated_sampler(calibrations[0] if len(calibrations) == 1 else calibrations)
        return fitted_outputs(sampler, calibrations, scheduler, cfg, cached)


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
                "scheduler and steps it was fitted for (a calibration of several step counts "
                "runs the one of the steps it is given)."),
            inputs=[io.String.Input("calibration", multiline=True, default="",
                                    tooltip="LML Calibrate's calibration output (JSON).")],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def validate_inputs(cls, calibration=None):
        return check_calibration_text(calibration, calibrations_from_json)

    @classmethod
    def execute(cls, calibration) -> io.NodeOutput:
        calibrations = calibrations_from_json(calibration)
        return io.NodeOutput(calibrated_sampler(
            calibrations[0] if len(calibrations) == 1 else calibrations))

