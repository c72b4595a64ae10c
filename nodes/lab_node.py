"""LMLSamplerLab ("LML Sampler Lab"): which sampler and how many steps, measured on the user's
own model, cfg and schedule.

One queue runs a reference (``reference_sampler`` at ``reference_steps``) and then every sampler
of ``samplers`` at every step count of ``steps``, all from the same initial noise (``seed``)
through ComfyUI's normal sampling path (``comfy.sample.sample_custom`` with
``comfy.samplers.sampler_object(name)`` and KSampler's sigmas), so model patches, masks,
previews and Cancel behave as in KSampler.  Model evaluations are counted by a wrapper on a
clone of the ModelPatcher, never assumed.  The comfy-free parts (parsing, metric, report,
pictures) live in ``lab_report``.

Each run goes through ``bridge.run_ksampler``, as KSampler (LML) and LML Compare do.
"""

from __future__ import annotations

import json
import time

import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..lml_core import expected_nfe, is_stochastic
from . import lab_report
from .bridge import calibrated_sampler, decode, run_ksampler
from .calibrate_node import DEFAULT_SAMPLES, run_calibration
from .lm_settings import check_number, validate
from .sampler_nodes import ksampler_category

NODE_ID = "LMLSamplerLab"
DISPLAY_NAME = "LML Sampler Lab"
WRAPPER_KEY = "lml_sampler_lab"

DEFAULT_SAMPLERS = "euler,lml_euler,dpmpp_2m,ipndm_v,deis,uni_pc"
DEFAULT_STEPS = "4,6,8,12,20"


# "lml_calibrated" in ``samplers``: LML Calibrate fitted at each step count on noise of its own
# (seed + 1, not the study's), with these settings (LML Calibrate's defaults), starting from the
# best pair of the study's schedulers and (deterministic, one call per step) samplers, then
# measured like every other row; its cost is the row's ``calibration_evaluations``.
CALIBRATED = "lml_calibrated"
CALIBRATION_SAMPLES = DEFAULT_SAMPLES
CALIBRATION_OPTIONS: dict = {}
BEST_OF_PAIRS = "(best of the pairs)"  # its label where the study compares schedulers


def sampler_names() -> list[str]:
    """ComfyUI's sampler list as it is now (the LML names and any wrapped variants included),
    and the calibrated LML sampler."""
    return [*comfy.samplers.KSampler.SAMPLERS, CALIBRATED]


class CallCounter:
    """Counts, on a clone of the ModelPatcher, the sampler's model evaluations (PREDICT_NOISE:
    one guided prediction, cond and uncond together) and the diffusion model's forward passes
    (APPLY_MODEL).  Every evaluation first checks for Cancel and then calls ``on_eval``."""

    def __init__(self, on_eval=None):
        self.evals = 0
        self.forward_passes = 0
        self.on_eval = on_eval

    def predict_noise(self, executor, *args, **kwargs):
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.evals += 1
        if self.on_eval is not None:
            self.on_eval()
        return executor(*args, **kwargs)

    def apply_model(self, executor, *args, **kwargs):
        self.forward_passes += 1
        return executor(*args, **kwargs)

    def attach(self, model):
        """A clone of ``model`` whose calls are counted here (the original is untouched)."""
        counted = model.clone()
        counted.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE,
                                     WRAPPER_KEY, self.predict_noise)
        counted.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL,
                                     WRAPPER_KEY, self.apply_model)
        return counted


class StudyProgress:
    """One progress bar over the whole study, in model evaluations.  Each run owns a slice of
    the total (its expected evaluations); the bar moves with the counted evaluations inside the
    slice, carries ComfyUI's latent previews, and jumps to the slice's end when the run ends."""

    def __init__(self, model, plan):
        self.slices = [expected_nfe(name, steps) for name, steps in plan]
        self.total = max(1, sum(self.slices))
        self.preview = latent_preview.prepare_callback(model, self.total)  # previews + the bar
        self.pbar = comfy.utils.ProgressBar(self.total)
        self.base = 0
        self.run = -1
        self.start_evals = 0

    def begin(self, run_index, counter):
        self.run = run_index
        self.start_evals = counter.evals
        self.base = sum(self.slices[:run_index])

    def position(self, counter):
        done = counter.evals - self.start_evals
        return self.base + min(done, self.slices[self.run])

    def callback(self, counter):
        def step(_step, x0, _x, _total):
            self.preview(max(0, self.position(counter) - 1), x0, _x, self.total)
        return step

    def end(self):
        self.pbar.update_absolute(self.base + self.slices[self.run], self.total)


def study_schedulers(schedulers, scheduler) -> list[str]:
    """The schedulers the samplers run on: the names in ``schedulers`` (validated), or the
    node's ``scheduler`` alone where that is empty (workflows saved before the input)."""
    return lab_report.parse_schedulers(schedulers, comfy.samplers.KSampler.SCHEDULERS) or [
        scheduler]


def run_study(model, positive, negative, latent_image, vae, seed, cfg, scheduler, samplers,
              steps, reference_sampler, reference_steps, schedulers=""):
    """Run the study; return (report dict, plot HxWx3 uint8, grid HxWx3 uint8).

    Every sampler runs on every scheduler of ``schedulers`` (or ``scheduler`` alone) at every
    step count, as KSampler runs that pair.  The reference runs on ``scheduler`` whatever
    ``schedulers`` lists, so the rows of every pair are measured against the same converged
    solution; lml_calibrated is fitted (once per step count) on ``scheduler``'s steps, starting
    from the best pair of the study's schedulers and samplers."""
    names = lab_report.parse_samplers(samplers, sampler_names())
    counts = lab_report.parse_steps(steps)
    scheds = study_schedulers(schedulers, scheduler)
    if reference_sampler not in comfy.samplers.KSampler.SAMPLERS:
        raise ValueError(f"reference_sampler: unknown sampler {reference_sampler!r}")
    pairs = len(scheds) > 1

    # The rows: (sampler, scheduler it runs on, its scheduler in the report, label).
    studied = []
    for name in names:
        if name == CALIBRATED:
            label = f"{CALIBRATED} {BEST_OF_PAIRS}" if pairs else CALIBRATED
            studied.append((name, scheduler, None if pairs else scheduler, label))
            continue
        for sched in scheds:
            studied.append((name, sched, sched,
                            lab_report.row_label(name, sched if pairs else None)))
    plan = [(reference_sampler, reference_steps)] + [
        (name, n) for name, *_ in studied for n in counts]
    counter = CallCounter()
    counted = counter.attach(model)
    progress = StudyProgress(model, plan)
    field = [name for name in names if name != CALIBRATED]

    def sampler_for(name, n_steps):
        """(SAMPLER, the calibration or None)."""
        if name != CALIBRATED:
            return comfy.samplers.sampler_object(name), None
        calibration, _ = run_calibration(model, positive, negative, latent_image,
                                         (seed + 1) % 2**64, cfg, scheduler, n_steps,
                                         CALIBRATION_SAMPLES, CALIBRATION_OPTIONS,
                                         schedulers=scheds, samplers=field)
        return calibrated_sampler(calibration), calibration

    def run(index, name, sched, n_steps):
        sampler, calibration = sampler_for(name, n_steps)
        progress.begin(index, counter)
        evals, passes = counter.evals, counter.forward_passes
        started = time.perf_counter()
        samples = run_ksampler(counted, latent_image, seed, n_steps, cfg, sampler, name,
                               sched, positive, negative,
                               callback=progress.callback(counter))
        seconds = time.perf_counter() - started
        progress.end()
        measured = {"nfe": counter.evals - evals, "model_calls": counter.forward_passes - passes,
                    "seconds": round(seconds, 4)}
        if calibration is not None:
            measured["calibration_evaluations"] = calibration.report["model_evaluations"]
            # What it runs, and the unchanged pairs it was compared with (held-out RMS).
            measured["calibration_chosen"] = calibration.report.get("chosen")
            measured["calibration_compared"] = calibration.report.get("heldout_rms_bases")
        return samples, measured

    ref_samples, ref_counts = run(0, reference_sampler, scheduler, reference_steps)
    ref_images = decode(vae, ref_samples)
    reference = {"sampler": reference_sampler, "scheduler": scheduler,
                 "steps": reference_steps, **ref_counts,
                 "stochastic": is_stochastic(reference_sampler)}

    rows, cells, captions = [], {}, {}
    index = 1
    for name, sched, row_scheduler, label in studied:
        for n_steps in counts:
            samples, measured = run(index, name, sched, n_steps)
            index += 1
            images = decode(vae, samples)
            row = {"sampler": name, "scheduler": row_scheduler, "label": label,
                   "steps": n_steps, "nfe": measured["nfe"],
                   "model_calls": measured["model_calls"],
                   "error": lab_report.rms_error(samples, ref_samples),
                   "psnr": lab_report.psnr(images, ref_images),
                   "seconds": measured["seconds"],
                   "stochastic": is_stochastic(name)}
            for key in ("calibration_evaluations", "calibration_chosen",
                        "calibration_compared"):
                if key in measured:
                    row[key] = measured[key]
            rows.append(row)
            cells[(label, n_steps)] = lab_report.to_uint8(images[0])
            psnr_text = "=" if row["psnr"] is None else f"{row['psnr']:.1f}dB"
            captions[(label, n_steps)] = f"nfe {row['nfe']}  {psnr_text}"

    settings = {"seed": seed, "cfg": cfg, "scheduler": scheduler, "schedulers": scheds,
                "latent_shape": list(ref_samples.shape), "batch_note": (
                    "error and psnr cover the whole batch; the grid shows its first image")}
    report = lab_report.build_report(reference, rows, settings)
    best = [(row["label"], row["steps"]) for row in report["rows"] if row["best"]]
    plot = lab_report.draw_error_plot(report)
    grid = lab_report.draw_grid(
        cells, list(dict.fromkeys(label for *_, label in studied)), counts,
        lab_report.to_uint8(ref_images[0]), f"{reference_sampler} {reference_steps}",
        captions=captions, best=best)
    return report, plot, grid


class LMLSamplerLab(io.ComfyNode):
    """Measures samplers against a converged reference on the user's own model."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name=DISPLAY_NAME,
            category=ksampler_category(),
            description=(
                "Which sampler and how many steps on YOUR model? Runs a converged reference "
                "and every listed sampler at every listed step count from the same noise, "
                "counts the model calls each makes, and reports the error against the "
                "reference (RMS latent difference, PSNR of the decoded image) with a log-log "
                "chart of error against model calls and a labelled grid of the images."),
            inputs=[
                io.Model.Input("model", tooltip="The model to measure the samplers on."),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image", tooltip=(
                    "The latent to sample (its size, batch and any noise_mask are used as in "
                    "KSampler).")),
                io.Vae.Input("vae", tooltip="Decodes every result for the PSNR and the grid."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             control_after_generate=True,
                             tooltip="The noise seed, the same for every run."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, the same for every run."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               default="karras", tooltip=(
                                   "The schedule of every run (with `schedulers` given: of the "
                                   "reference and of lml_calibrated's fit).")),
                io.String.Input("samplers", default=DEFAULT_SAMPLERS, tooltip=(
                    "Comma-separated names from ComfyUI's sampler list (the KSampler "
                    "dropdown, LML samplers included).")),
                io.String.Input("steps", default=DEFAULT_STEPS, tooltip=(
                    "Comma-separated step counts; every sampler runs at each.")),
                io.Combo.Input("reference_sampler", options=comfy.samplers.KSampler.SAMPLERS,
                               default="dpmpp_2m", tooltip=(
                                   "The sampler of the converged reference; a deterministic "
                                   "one (no noise added) is best.")),
                io.Int.Input("reference_steps", default=100, min=1, max=10000, tooltip=(
                    "Steps of the reference run: enough that more would not change it.")),
                # Added after workflows were saved: last, optional, and empty = `scheduler`.
                io.String.Input("schedulers", default="", optional=True, tooltip=(
                    "Comma-separated names from ComfyUI's scheduler list (the KSampler "
                    "dropdown), e.g. 'karras,exponential': every sampler runs on each, one "
                    "row per sampler and scheduler pair. Empty: `scheduler` alone.")),
            ],
            outputs=[
                io.String.Output("report", display_name="report", tooltip=(
                    "JSON: the reference, the metric and one row per sampler (or sampler and "
                    "scheduler pair) and step count (sampler, scheduler, label, steps, nfe, "
                    "error, psnr, seconds, best).")),
                io.Image.Output("plot", display_name="plot",
                                tooltip="Error against model calls, log-log, one line per "
                                        "sampler (or pair)."),
                io.Image.Output("grid", display_name="grid", tooltip=(
                    "The decoded images: one row per sampler (or pair), one column per step "
                    "count, and the reference.")),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, samplers=None, steps=None, cfg=None, scheduler=None,
                        reference_sampler=None, schedulers=None):
        """Before anything runs: cfg is a number within its widget's bounds (ComfyUI's own check
        lets NaN through, and a NaN cfg would run every sampler to NaN), every sampler and
        scheduler name is in ComfyUI's list (0.3.75 does not check a V3 combo) and every step
        count is a whole number from 1 to 10000.  (Values from links are checked when the node
        runs.)"""
        message = check_number(cls, "cfg", cfg) or validate(
            {"scheduler": (scheduler, comfy.samplers.KSampler.SCHEDULERS),
             "reference_sampler": (reference_sampler, comfy.samplers.KSampler.SAMPLERS)})
        if message is not True:
            return message
        try:
            if isinstance(samplers, str):
                lab_report.parse_samplers(samplers, sampler_names())
            if isinstance(steps, str):
                lab_report.parse_steps(steps)
            if isinstance(schedulers, str):
                lab_report.parse_schedulers(schedulers, comfy.samplers.KSampler.SCHEDULERS)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, model, positive, negative, latent_image, vae, seed, cfg, scheduler,
                samplers, steps, reference_sampler, reference_steps,
                schedulers="") -> io.NodeOutput:
        message = cls.validate_inputs(samplers, steps, cfg, scheduler, reference_sampler,
                                      schedulers)
        if message is not True:  # a linked value: known only now
            raise ValueError(message)
        report, plot, grid = run_study(model, positive, negative, latent_image, vae, seed, cfg,
                                       scheduler, samplers, steps, reference_sampler,
                                       reference_steps, schedulers)
        return io.NodeOutput(json.dumps(report, indent=1), lab_report.as_image_batch(plot),
                             lab_report.as_image_batch(grid), ui={"lml_lab": [report]})
