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
from .lm_settings import check_number
from .sampler_nodes import ksampler_category

NODE_ID = "LMLSamplerLab"
DISPLAY_NAME = "LML Sampler Lab"
WRAPPER_KEY = "lml_sampler_lab"

DEFAULT_SAMPLERS = "euler,lml_euler,dpmpp_2m,ipndm_v,deis,uni_pc"
DEFAULT_STEPS = "4,6,8,12,20"


# "lml_calibrated" in ``samplers``: LML Calibrate fitted at each step count on noise of its own
# (seed + 1, not the study's), with these settings (LML Calibrate's defaults), then measured like
# every other row; its cost is the row's ``calibration_evaluations``.
CALIBRATED = "lml_calibrated"
CALIBRATION_SAMPLES = DEFAULT_SAMPLES
CALIBRATION_OPTIONS: dict = {}


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


def run_study(model, positive, negative, latent_image, vae, seed, cfg, scheduler, samplers,
              steps, reference_sampler, reference_steps):
    """Run the study; return (report dict, plot HxWx3 uint8, grid HxWx3 uint8)."""
    names = lab_report.parse_samplers(samplers, sampler_names())
    counts = lab_report.parse_steps(steps)
    if reference_sampler not in comfy.samplers.KSampler.SAMPLERS:
        raise ValueError(f"reference_sampler: unknown sampler {reference_sampler!r}")

    plan = [(reference_sampler, reference_steps)] + [(n, s) for n in names for s in counts]
    counter = CallCounter()
    counted = counter.attach(model)
    progress = StudyProgress(model, plan)

    def sampler_for(name, n_steps):
        """(SAMPLER, calibration evaluations or None)."""
        if name != CALIBRATED:
            return comfy.samplers.sampler_object(name), None
        calibration, _ = run_calibration(model, positive, negative, latent_image,
                                         (seed + 1) % 2**64, cfg, scheduler, n_steps,
                                         CALIBRATION_SAMPLES, CALIBRATION_OPTIONS)
        return calibrated_sampler(calibration), calibration.report["model_evaluations"]

    def run(index, name, n_steps):
        sampler, calibration_evaluations = sampler_for(name, n_steps)
        progress.begin(index, counter)
        evals, passes = counter.evals, counter.forward_passes
        started = time.perf_counter()
        samples = run_ksampler(counted, latent_image, seed, n_steps, cfg, sampler, name,
                               scheduler, positive, negative,
                               callback=progress.callback(counter))
        seconds = time.perf_counter() - started
        progress.end()
        measured = {"nfe": counter.evals - evals, "model_calls": counter.forward_passes - passes,
                    "seconds": round(seconds, 4)}
        if calibration_evaluations is not None:
            measured["calibration_evaluations"] = calibration_evaluations
        return samples, measured

    ref_samples, ref_counts = run(0, reference_sampler, reference_steps)
    ref_images = decode(vae, ref_samples)
    reference = {"sampler": reference_sampler, "steps": reference_steps, **ref_counts,
                 "stochastic": is_stochastic(reference_sampler)}

    rows, cells, captions = [], {}, {}
    index = 1
    for name in names:
        for n_steps in counts:
            samples, measured = run(index, name, n_steps)
            index += 1
            images = decode(vae, samples)
            row = {"sampler": name, "steps": n_steps, "nfe": measured["nfe"],
                   "model_calls": measured["model_calls"],
                   "error": lab_report.rms_error(samples, ref_samples),
                   "psnr": lab_report.psnr(images, ref_images),
                   "seconds": measured["seconds"],
                   "stochastic": is_stochastic(name)}
            if "calibration_evaluations" in measured:
                row["calibration_evaluations"] = measured["calibration_evaluations"]
            rows.append(row)
            cells[(name, n_steps)] = lab_report.to_uint8(images[0])
            psnr_text = "=" if row["psnr"] is None else f"{row['psnr']:.1f}dB"
            captions[(name, n_steps)] = f"nfe {row['nfe']}  {psnr_text}"

    settings = {"seed": seed, "cfg": cfg, "scheduler": scheduler,
                "latent_shape": list(ref_samples.shape), "batch_note": (
                    "error and psnr cover the whole batch; the grid shows its first image")}
    report = lab_report.build_report(reference, rows, settings)
    best = [(row["sampler"], row["steps"]) for row in report["rows"] if row["best"]]
    plot = lab_report.draw_error_plot(report)
    grid = lab_report.draw_grid(
        cells, names, counts, lab_report.to_uint8(ref_images[0]),
        f"{reference_sampler} {reference_steps}", captions=captions, best=best)
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
                               default="karras", tooltip="The schedule of every run."),
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
            ],
            outputs=[
                io.String.Output("report", display_name="report", tooltip=(
                    "JSON: the reference, the metric and one row per sampler and step count "
                    "(sampler, steps, nfe, error, psnr, seconds).")),
                io.Image.Output("plot", display_name="plot",
                                tooltip="Error against model calls, log-log, one line per "
                                        "sampler."),
                io.Image.Output("grid", display_name="grid", tooltip=(
                    "The decoded images: one row per sampler, one column per step count, and "
                    "the reference.")),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, samplers=None, steps=None, cfg=None):
        """Before anything runs: cfg is a number within its widget's bounds (ComfyUI's own check
        lets NaN through, and a NaN cfg would run every sampler to NaN), every sampler name is
        in ComfyUI's list and every step count is a whole number from 1 to 10000.  (Values from
        links are checked when the node runs.)"""
        message = check_number(cls, "cfg", cfg)
        if message:
            return message
        try:
            if isinstance(samplers, str):
                lab_report.parse_samplers(samplers, sampler_names())
            if isinstance(steps, str):
                lab_report.parse_steps(steps)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, model, positive, negative, latent_image, vae, seed, cfg, scheduler,
                samplers, steps, reference_sampler, reference_steps) -> io.NodeOutput:
        message = cls.validate_inputs(samplers, steps, cfg)
        if message is not True:  # a linked value: known only now
            raise ValueError(message)
        report, plot, grid = run_study(model, positive, negative, latent_image, vae, seed, cfg,
                                       scheduler, samplers, steps, reference_sampler,
                                       reference_steps)
        return io.NodeOutput(json.dumps(report, indent=1), lab_report.as_image_batch(plot),
                             lab_report.as_image_batch(grid), ui={"lml_lab": [report]})
