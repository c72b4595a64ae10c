"""LML Calibrate against the whole deterministic field on the trained digits checkpoint (issue
24), in-process ComfyUI: docs/bench/digits_field.md and .json.

For each step count (the NFE budget): a converged reference per test noise (the LML Sampler
Lab's: ``dpmpp_2m`` at ``--reference-steps`` karras steps through KSampler's path, its
convergence checked against half as many steps); every deterministic host sampler with every
host scheduler, run exactly as KSampler runs them (``nodes.bridge.run_ksampler``: KSampler's
sigmas, the discard-penultimate rule), and with the sigmas of ComfyUI's own
AlignYourStepsScheduler (model_type SD1) and GITSScheduler (its default coeff) nodes through
ComfyUI's own SamplerCustom node; each at the most steps whose model calls fit the budget
(``expected_nfe``; the calls are counted on a clone of the model, never assumed).  Then LML
Calibrate as the node runs it (``run_calibration`` with every host scheduler and the
one-call-per-step deterministic samplers, its default options unless overridden) on
calibration noises from a seed apart from the test seed, and its SAMPLER scored on the same
test noises through KSampler's path with the scheduler it was fitted for.  Error: RMS latent
distance to the reference over all test noises (the Lab's metric).

    .host/venv/bin/python -m harness.digits_field [--steps 4,5,6,8,10] [--noises 8] ...
    .host/venv/bin/python -m harness.digits_field --report-only   # the .md again from the .json

Run with OMP_NUM_THREADS=1 (the torch threads are set to --threads).  The JSON is rewritten
after every step count, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

from . import comfy_host
from .tiny_digits import digit_prompt

STEPS = (4, 5, 6, 8, 10)
CFG = 5.0
DIGIT = 4
SIZE = 64  # pixels: 8x8x4 latents
TEST_SEED = 1000  # the test noises: one batch of --noises from this seed (KSampler's noise)
CALIBRATION_SEED = 0  # LML Calibrate's default seed: its noises differ from the test noises
CALIBRATION_SCHEDULER = "karras"  # LML Calibrate's default scheduler widget
REFERENCE_SAMPLER = "dpmpp_2m"  # the Lab's reference sampler, on its default scheduler
REFERENCE_SCHEDULER = "karras"
AYS = "AYS (SD1)"
GITS = "GITS"
OUT = comfy_host.ROOT / "docs" / "bench" / "digits_field"
PACK_MODULE = "comfyui_lml_digits_field"

# The committed run (python -m harness.digits_field with no arguments): the sizes a shared
# 2-core CPU affords (see the docstring of main).
DEFAULTS = {"noises": 8, "screen": 2, "keep": 8, "reference_steps": 100, "samples": 8,
            "iterations": 4}

_pack = None


def load_pack():
    """ComfyUI importable (CPU) and this repository loaded as a custom node package, as
    ComfyUI loads one (spec_from_file_location on its __init__.py); once per process."""
    global _pack
    if _pack is None:
        comfy_host.import_comfy()
        spec = importlib.util.spec_from_file_location(
            PACK_MODULE, comfy_host.ROOT / "__init__.py",
            submodule_search_locations=[str(comfy_host.ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_MODULE] = module
        spec.loader.exec_module(module)
        _pack = module
    return _pack


def load_digits():
    """(model patcher, clip) of the digits checkpoint, loaded by ComfyUI's own checkpoint
    loader (what CheckpointLoaderSimple calls)."""
    comfy_host.import_comfy()
    import comfy.sd

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(
        str(comfy_host.ensure_digits_checkpoint()), output_vae=False, output_clip=True,
        embedding_directory=None)
    return model, clip


def encode(clip, text):
    """CLIPTextEncode's conditioning for ``text``."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def host_node(node, **inputs):
    """A host V3 node's execute, called as ComfyUI's execution calls it (on a locked clone
    of the class); its first output."""
    from comfy_api.internal import make_locked_method_func

    output = make_locked_method_func(node, "execute", node.PREPARE_CLASS_CLONE({}))(**inputs)
    return output.result[0]


def gits_default_coeff() -> float:
    from comfy_extras.nodes_gits import GITSScheduler

    schema = GITSScheduler.define_schema()
    return float(next(i.default for i in schema.inputs if i.id == "coeff"))


def node_schedules(steps: int) -> dict:
    """{label: sigmas tensor, or the reason it is not available} of the host's own
    AlignYourStepsScheduler (model_type SD1) and GITSScheduler (default coeff) at ``steps``."""
    from comfy_extras.nodes_align_your_steps import AlignYourStepsScheduler
    from comfy_extras.nodes_gits import GITSScheduler

    calls = {AYS: (AlignYourStepsScheduler, {"model_type": "SD1"}),
             f"{GITS} (coeff {gits_default_coeff():g})": (GITSScheduler,
                                                        {"coeff": gits_default_coeff()})}
    out = {}
    for label, (node, inputs) in calls.items():
        try:
            sigmas = host_node(node, **inputs, steps=steps, denoise=1.0)
        except Exception as error:  # a step count the node does not take
            out[label] = f"not available: {type(error).__name__}: {error}"
            continue
        if len(sigmas) != steps + 1:
            out[label] = f"not available: {len(sigmas) - 1} steps, not {steps}"
        else:
            out[label] = sigmas
    return out


def steps_for_budget(pack, sampler: str, nfe: int) -> int:
    """The most steps whose model calls (lml_core.expected_nfe) fit the budget ``nfe``."""
    steps = nfe
    while steps > 1 and pack.lml_core.expected_nfe(sampler, steps) > nfe:
        steps -= 1
    return steps


def ksampler_steps(pack, model, sampler: str, scheduler: str, nfe: int) -> int:
    """The most KSampler steps for ``sampler`` and ``scheduler`` whose model calls fit the
    budget ``nfe``, counted on the sigmas KSampler really gives (ddim_uniform gives one step
    more than asked at some step counts, e.g. 7 for 6)."""
    bridge = pack.nodes.bridge
    steps = steps_for_budget(pack, sampler, nfe)
    while steps > 1 and pack.lml_core.expected_nfe(
            sampler, len(bridge.ksampler_sigmas(model, steps, sampler, scheduler)) - 1) > nfe:
        steps -= 1
    return steps


class Bench:
    """The model (a counting clone), conditioning, cfg and the test noises' latent, and the
    ways of sampling them: KSampler's path with a host scheduler, SamplerCustom with given
    sigmas."""

    def __init__(self, pack, model, positive, negative, cfg, noises, seed=TEST_SEED,
                 size=SIZE):
        import torch

        self.pack = pack
        self.counter = pack.nodes.lab_node.CallCounter()
        self.plain_model = model
        self.model = self.counter.attach(model)
        self.positive, self.negative, self.cfg, self.seed = positive, negative, cfg, seed
        # KSampler's noise per batch index (as for a latent batch carrying batch_index): the
        # first k test noises are the same whatever the batch size, so a screen on k of them
        # shares the reference's first k rows.
        self.latent = {"samples": torch.zeros([noises, 4, size // 8, size // 8]),
                       "batch_index": list(range(noises))}

    def _counted(self, run):
        before = self.counter.evals
        samples = run()
        return samples, self.counter.evals - before

    def ksampler(self, sampler, sampler_name, steps, scheduler):
        """(samples, model evaluations) of KSampler with ``scheduler`` and SAMPLER
        ``sampler`` (its sigmas for ``sampler_name``)."""
        return self._counted(lambda: self.pack.nodes.bridge.run_ksampler(
            self.model, self.latent, self.seed, steps, self.cfg, sampler, sampler_name,
            scheduler, self.positive, self.negative, callback=lambda *_: None))

    def sampler_custom(self, sampler, sigmas):
        """(samples, model evaluations) of ComfyUI's SamplerCustom node with ``sigmas``."""
        from comfy_extras.nodes_custom_sampler import SamplerCustom

        return self._counted(lambda: host_node(
            SamplerCustom, model=self.model, add_noise=True, noise_seed=self.seed, cfg=self.cfg,
            positive=self.positive, negative=self.negative, sampler=sampler, sigmas=sigmas,
            latent_image=self.latent)["samples"])


def rms(pack, samples, reference) -> float:
    return pack.nodes.lab_report.rms_error(samples, reference)


def measure_reference(bench, reference_steps, log):
    """The converged reference (the Lab's: dpmpp_2m, karras) and its check against half the
    steps."""
    import comfy.samplers

    sampler = comfy.samplers.sampler_object(REFERENCE_SAMPLER)
    started = time.perf_counter()
    reference, nfe = bench.ksampler(sampler, REFERENCE_SAMPLER, reference_steps,
                                    REFERENCE_SCHEDULER)
    half, _ = bench.ksampler(sampler, REFERENCE_SAMPLER, max(1, reference_steps // 2),
                             REFERENCE_SCHEDULER)
    info = {"sampler": REFERENCE_SAMPLER, "scheduler": REFERENCE_SCHEDULER,
            "steps": reference_steps, "nfe": nfe, "halved_steps": max(1, reference_steps // 2),
            "rms_to_halved": rms(bench.pack, half, reference),
            "seconds": round(time.perf_counter() - started, 1)}
    log(f"reference {REFERENCE_SAMPLER} {reference_steps} {REFERENCE_SCHEDULER} steps: "
        f"RMS to {info['halved_steps']} steps {info['rms_to_halved']:.3g} "
        f"({info['seconds']} s)")
    return reference, info


def field_pairs(bench, nfe, samplers, schedulers):
    """The runs of budget ``nfe``: (sampler, schedule, steps, sigmas or None for a host
    scheduler) of every sampler with every host scheduler and every node schedule; and
    {label: {steps: sigmas list or the reason it is not available}} of the node schedules."""
    pairs, extra = [], {}
    for name in samplers:
        steps = steps_for_budget(bench.pack, name, nfe)
        pairs += [(name, scheduler, ksampler_steps(bench.pack, bench.model, name, scheduler,
                                                   nfe), None)
                  for scheduler in schedulers]
        for label, sigmas in node_schedules(steps).items():
            if isinstance(sigmas, str):
                extra.setdefault(label, {})[steps] = sigmas
            else:
                extra.setdefault(label, {})[steps] = [float(s) for s in sigmas]
                pairs.append((name, label, steps, sigmas))
    return pairs, extra


def run_pairs(bench, reference, pairs, nfe, log):
    """Rows {sampler, schedule, steps, nfe, rms (, failed)} of ``pairs`` on ``bench``'s noise."""
    import comfy.samplers

    rows = []
    for name, schedule, steps, sigmas in pairs:
        sampler = comfy.samplers.sampler_object(name)
        row = {"sampler": name, "schedule": schedule, "steps": steps}
        try:
            if sigmas is None:
                samples, calls = bench.ksampler(sampler, name, steps, schedule)
            else:
                samples, calls = bench.sampler_custom(sampler, sigmas)
            row.update(nfe=calls, rms=rms(bench.pack, samples, reference))
            if not math.isfinite(row["rms"]):
                row["failed"] = "non-finite samples"
            elif calls > nfe:
                row["failed"] = f"{calls} model calls, over the budget {nfe}"
        except Exception as error:  # one pair that cannot run here: said, not fatal
            row.update(nfe=None, rms=None, failed=f"{type(error).__name__}: {error}")
        rows.append(row)
    return rows


def finalists(rows, schedulers, keep):
    """The pairs a screen passes on: the ``keep`` best, and the 3 best on karras and on the
    node schedules (so that every column of the table is measured on all test noises)."""
    ok = sorted((r for r in rows if not r.get("failed")), key=lambda r: r["rms"])
    chosen = ok[:keep] + [r for r in ok if r["schedule"] == "karras"][:3] + [
        r for r in ok if r["schedule"] not in schedulers][:3]
    return {(r["sampler"], r["schedule"]) for r in chosen}


def measure_field(bench, reference, nfe, samplers, schedulers, log, screen=None):
    """Rows of every sampler x schedule at budget ``nfe`` and the node schedules'
    availability.  ``screen``: (bench, reference, keep) of a screen on the first test noises:
    every pair runs there ("screen_rms"), and only the finalists on all test noises."""
    pairs, extra = field_pairs(bench, nfe, samplers, schedulers)
    if screen is None:
        rows = run_pairs(bench, reference, pairs, nfe, log)
    else:
        screen_bench, screen_reference, keep = screen
        rows = run_pairs(screen_bench, screen_reference, pairs, nfe, log)
        passed = finalists(rows, schedulers, keep)
        final = run_pairs(bench, reference, [p for p in pairs if p[:2] in passed], nfe, log)
        by_pair = {(r["sampler"], r["schedule"]): r for r in final}
        for row in rows:
            row["screen_rms"], row["screen_nfe"] = row.pop("rms"), row.pop("nfe")
            full = by_pair.get((row["sampler"], row["schedule"]))
            row.update(rms=None if full is None else full["rms"],
                       nfe=None if full is None else full["nfe"])
            if full is not None and full.get("failed"):
                row["failed"] = full["failed"]
    done = sorted((r for r in rows if r["rms"] is not None and not r.get("failed")),
                  key=lambda r: r["rms"])
    if done:
        log(f"  NFE {nfe}: best {done[0]['sampler']} + {done[0]['schedule']} "
            f"{done[0]['rms']:.4g} ({len(pairs)} pairs)")
    return rows, extra


def measure_calibration(bench, reference, nfe, samples, options, schedulers, samplers, log,
                        size=SIZE):
    """LML Calibrate as LMLCalibrate.execute runs it (run_calibration with the host schedulers
    and the one-call-per-step deterministic samplers), on its own noise of ``size`` pixels;
    its SAMPLER scored on the test noises (their own size: another one measures how a
    calibration transfers) through KSampler's path with the scheduler it was fitted for."""
    import torch

    bridge = bench.pack.nodes.bridge
    field = [name for name in bridge.calibration_samplers(nfe) if name in samplers]
    latent = {"samples": torch.zeros([1, 4, size // 8, size // 8])}
    started = time.perf_counter()
    calibration, cached = bench.pack.nodes.calibrate_node.run_calibration(
        bench.plain_model, bench.positive, bench.negative, latent, CALIBRATION_SEED, bench.cfg,
        CALIBRATION_SCHEDULER, nfe, samples, dict(options), schedulers=list(schedulers),
        samplers=field)
    seconds = time.perf_counter() - started
    if cached is not None:
        raise RuntimeError(f"the calibration came from the cache {cached}, not fitted here")
    out, calls = bench.ksampler(bridge.calibrated_sampler(calibration), "euler", nfe,
                                CALIBRATION_SCHEDULER)
    report = calibration.report
    result = {"rms": rms(bench.pack, out, reference), "nfe": calls,
              "chosen": report["chosen"], "runs": calibration.sampler,
              "heldout_rms": report["heldout_rms"],
              "candidates": {k: v["heldout_rms"] for k, v in report["candidates"].items()},
              "model_evaluations": report["model_evaluations"],
              "model_calls": report["model_calls"], "seconds": round(seconds, 1),
              "samplers": field, "schedules_left_out": report["schedules_left_out"]}
    log(f"  NFE {nfe} calibrated: {result['rms']:.4g} (chose {result['chosen']}; "
        f"{result['model_evaluations']} evaluations, {result['seconds']} s)")
    return result


def summarize(rows, calibrated, schedulers):
    """The step count's line of the table."""
    ok = [r for r in rows if r["rms"] is not None and not r.get("failed")]

    def best(subset):
        if not subset:
            return None
        r = min(subset, key=lambda r: r["rms"])
        return {"pair": f"{r['sampler']} + {r['schedule']}", "rms": r["rms"], "nfe": r["nfe"]}

    node = [r for r in ok if r["schedule"] not in schedulers]
    line = {"best_pair": best(ok), "best_node_schedule_pair": best(node),
            "best_karras": best([r for r in ok if r["schedule"] == "karras"]),
            "top5": [f"{r['sampler']} + {r['schedule']}: {r['rms']:.4g}"
                     for r in sorted(ok, key=lambda r: r["rms"])[:5]],
            "failed": [f"{r['sampler']} + {r['schedule']}: {r['failed']}" for r in rows
                       if r.get("failed")]}
    if calibrated is not None and line["best_pair"] is not None:
        line["ratio"] = calibrated["rms"] / line["best_pair"]["rms"]
    return line


def setup_of(pack, steps_list=STEPS, cfg=CFG, noises=DEFAULTS["noises"],
             reference_steps=DEFAULTS["reference_steps"], samples=DEFAULTS["samples"],
             options=None, samplers=None, schedulers=None, screen=DEFAULTS["screen"],
             keep=DEFAULTS["keep"], digit=DIGIT, size=SIZE, fit_size=None, **_) -> dict:
    """What a run measures, as its JSON file says it (the field's defaults resolved)."""
    import comfy.samplers

    host_samplers = comfy.samplers.KSampler.SAMPLERS
    samplers = list(samplers or pack.lml_core.samplers_of_kind("deterministic", host_samplers))
    schedulers = list(schedulers or comfy.samplers.KSampler.SCHEDULERS)
    options = dict(options or {})
    setup = {"checkpoint": comfy_host.digits_checkpoint_name(), "prompt": digit_prompt(digit),
             "negative": "", "cfg": cfg, "size": size, "latent": [4, size // 8, size // 8],
             "test_noises": noises, "test_seed": TEST_SEED,
             "screen": {"noises": screen, "keep": keep} if 0 < screen < noises else None,
             "reference_steps": reference_steps,
             "calibration": {"samples": samples, "seed": CALIBRATION_SEED,
                             **({"size": fit_size} if fit_size not in (None, size) else {}),
                             "scheduler": CALIBRATION_SCHEDULER,
                             "options": {**pack.lml_core.CALIBRATE_DEFAULTS, **options},
                             "options_changed": options},
             "samplers": samplers, "schedulers": schedulers,
             "node_schedules": [AYS, f"{GITS} (coeff {gits_default_coeff():g})"],
             "steps": list(steps_list), "comfyui": _comfy_version()}
    return json.loads(json.dumps(setup))  # as it reads back from the file


def measure(pack, model, clip, steps_list=STEPS, cfg=CFG, noises=DEFAULTS["noises"],
            reference_steps=DEFAULTS["reference_steps"], samples=DEFAULTS["samples"],
            options=None, samplers=None, schedulers=None, screen=DEFAULTS["screen"],
            keep=DEFAULTS["keep"], digit=DIGIT, log=print, on_step=None, done=None,
            elapsed_before=0.0, size=SIZE, fit_size=None) -> dict:
    """The whole measurement (see the module docstring).  ``samplers`` / ``schedulers``: the
    field (default: every deterministic host sampler, every host scheduler); ``options``: LML
    Calibrate's advanced inputs that differ from its defaults; ``screen``: test noises every
    pair runs on first (0: all pairs on all noises), ``keep``: how many best pairs then run
    on all (with the 3 best on karras and on AYS/GITS); ``on_step(result)`` after each step
    count; ``done``: {step count: entry} measured before with the same setup (not rerun), in
    ``elapsed_before`` seconds.  ``size``: the test noises' pixels; ``fit_size``: the
    calibration's (default: the same; another measures a calibration at a size it was not
    fitted at)."""
    import folder_paths

    started = time.perf_counter() - elapsed_before
    setup = setup_of(pack, steps_list, cfg, noises, reference_steps, samples, options, samplers,
                     schedulers, screen, keep, digit, size, fit_size)
    samplers, schedulers = setup["samplers"], setup["schedulers"]
    positive, negative = encode(clip, setup["prompt"]), encode(clip, "")
    bench = Bench(pack, model, positive, negative, cfg, noises, size=size)
    screening = setup["screen"] is not None
    options = setup["calibration"]["options_changed"]
    result = {"setup": setup, "steps": {}, "complete": False}
    reference, result["reference"] = measure_reference(bench, reference_steps, log)
    screen_args = None
    if screening:
        screen_args = (Bench(pack, model, positive, negative, cfg, screen, size=size),
                       reference[:screen],
                       keep)
    old_user = folder_paths.get_user_directory()
    with tempfile.TemporaryDirectory() as user:  # no calibration cache: every fit runs here
        folder_paths.set_user_directory(user)
        try:
            for nfe in steps_list:
                if done and str(nfe) in done:
                    result["steps"][str(nfe)] = done[str(nfe)]
                    log(f"NFE {nfe}: measured before, kept")
                    continue
                t = time.perf_counter()
                rows, extra = measure_field(bench, reference, nfe, samplers, schedulers, log,
                                            screen_args)
                field_seconds = time.perf_counter() - t
                calibrated = measure_calibration(bench, reference, nfe, samples, options,
                                                 schedulers, samplers, log, fit_size or size)
                result["steps"][str(nfe)] = {
                    **summarize(rows, calibrated, schedulers), "calibrated": calibrated,
                    "field_seconds": round(field_seconds, 1), "node_schedules": extra,
                    "rows": rows}
                result["seconds"] = round(time.perf_counter() - started, 1)
                if on_step is not None:
                    on_step(result)
        finally:
            folder_paths.set_user_directory(old_user)
    result["complete"] = True
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _comfy_version() -> str:
    try:
        from comfyui_version import __version__

        return __version__
    except ImportError:
        return "unknown"


# --------------------------------------------------------------------------------------------
# The report


def _fmt(best) -> str:
    return "-" if best is None else f"{best['pair']} ({best['rms']:.4g})"


def losses(result) -> list[str]:
    """One line per step count where the calibrated sampler is worse than the best pair."""
    out = []
    for nfe, line in result["steps"].items():
        ratio = line.get("ratio")
        if ratio is not None and ratio > 1:
            out.append(f"{nfe} steps: calibrated {line['calibrated']['rms']:.4g} vs "
                       f"{line['best_pair']['pair']} {line['best_pair']['rms']:.4g}, "
                       f"{ratio:.3f}x (+{100 * (ratio - 1):.1f}% error)")
    return out


def markdown(result, command="python -m harness.digits_field") -> str:
    s, ref = result["setup"], result["reference"]
    cal = s["calibration"]
    pairs = len(s["samplers"]) * (len(s["schedulers"]) + len(s["node_schedules"]))
    best_error = min((line["best_pair"]["rms"] for line in result["steps"].values()
                      if line.get("best_pair")), default=float("nan"))
    lines = [
        "# LML Calibrate against the whole field on the digits checkpoint",
        "",
        f"`.host/venv/bin/python -m {command.removeprefix('python -m ')}` "
        f"(harness/digits_field.py), ComfyUI {s['comfyui']} in-process on the CPU, "
        f"{torch_threads(command)} torch thread(s); the run took {result['seconds'] / 60:.1f} "
        "min of wall time on a 2-core machine that may have been shared with other jobs."
        + ("" if result.get("complete") else " **Incomplete run: only the step counts below "
           "were measured.**"),
        "",
        f"**Setup.** `{s['checkpoint']}`, \"{s['prompt']}\" with an empty negative prompt, cfg "
        f"{s['cfg']:g}, {s['size']} px ({'x'.join(map(str, s['latent']))} latents). "
        f"{s['test_noises']} test noises (KSampler's noise from seed {s['test_seed']}, drawn "
        "per batch index as for a latent batch carrying batch_index). Error: RMS latent "
        "distance to a converged reference from the same noise over all test noises (the LML "
        "Sampler Lab's metric; latents as KSampler outputs them).",
        "",
        f"**Reference.** {ref['sampler']} at {ref['steps']} {ref['scheduler']} steps through "
        f"KSampler's path (the Lab's reference). Against {ref['halved_steps']} steps it differs "
        f"by {ref['rms_to_halved']:.3g} RMS, {100 * ref['rms_to_halved'] / best_error:.1f}% of "
        "the smallest error in the table below.",
        "",
        f"**The field.** {len(s['samplers'])} deterministic host samplers "
        f"({', '.join(s['samplers'])}) x {len(s['schedulers'])} host schedulers "
        f"({', '.join(s['schedulers'])}) run as KSampler runs them (its sigmas, its "
        "discard-penultimate rule), plus the sigmas of the host's AlignYourStepsScheduler "
        "(model_type SD1) and GITSScheduler (default coeff) nodes with every sampler through "
        f"the host's SamplerCustom node: {pairs} pairs per step count. Each pair makes at most "
        "the step count's model calls (heun, dpm_2 and heunpp2 take fewer steps, and so does "
        "ddim_uniform where KSampler's sigmas have one step more than asked); the calls were "
        "counted."
        + ("" if not s.get("screen") else
           f" Every pair ran on the first {s['screen']['noises']} test noises (a screen); the "
           f"{s['screen']['keep']} best pairs of each step count, and the 3 best on karras and "
           f"on AYS/GITS, then ran on all {s['test_noises']}: the errors below are theirs."),
        "",
        f"**Calibrated.** LML Calibrate's `run_calibration` as the node runs it: every host "
        f"scheduler and every one-call-per-step deterministic host sampler, {cal['samples']} "
        f"calibration noises from seed {cal['seed']} (not the test noises), scheduler "
        f"{cal['scheduler']}, default options"
        + (" except " + ", ".join(f"{k} {v}" for k, v in cal["options_changed"].items())
           if cal["options_changed"] else "")
        + (f", fitted at {cal['size']} px (not the test noises' size: how a calibration "
           "transfers to another latent size)" if cal.get("size") else "")
        + f"; its SAMPLER then sampled the test noises through KSampler's path on "
        f"{cal['scheduler']}. Evaluations and seconds: the calibration's own (per-sample model "
        "evaluations).",
        "",
        "| steps (NFE) | best pair (RMS) | best AYS/GITS pair (RMS) | best on karras (RMS) | "
        "calibrated RMS | calibrated / best pair | calibration chose | its evaluations | its "
        "seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for nfe, line in result["steps"].items():
        c = line["calibrated"]
        ratio = line.get("ratio")
        lines.append(
            f"| {nfe} | {_fmt(line['best_pair'])} | {_fmt(line['best_node_schedule_pair'])} | "
            f"{_fmt(line['best_karras'])} | {c['rms']:.4g} | "
            f"{'-' if ratio is None else f'**{ratio:.3f}**'} | {c['chosen']} | "
            f"{c['model_evaluations']:,} | {c['seconds']:.0f} |")
    lost = losses(result)
    lines += ["", "**Where calibration loses** (calibrated / best pair > 1): "
              + ("; ".join(lost) if lost else "nowhere in this run.") + "", ""]
    lines += ["## Per step count", ""]
    for nfe, line in result["steps"].items():
        c = line["calibrated"]
        lines.append(f"- **{nfe} steps.** Five best pairs: {'; '.join(line['top5'])}. "
                     f"The calibration's candidates on its held-out noise (RMS): "
                     + ", ".join(f"{k} {v:.4g}" for k, v in c["candidates"].items())
                     + f". Field: {line['field_seconds']:.0f} s.")
        unavailable = [f"{label} at {steps} steps ({why})"
                       for label, per in line["node_schedules"].items()
                       for steps, why in per.items() if isinstance(why, str)]
        if unavailable:
            lines.append(f"  Not available: {'; '.join(unavailable)}.")
        if line["failed"]:
            lines.append(f"  Could not run: {'; '.join(line['failed'])}.")
    lines.append("")
    return "\n".join(lines)


def readme_table(result) -> str:
    """The table README.md quotes, made from the result so that it is never typed by hand
    (bench.readme writes it into README's digits-field and digits-size blocks;
    tests/bench/test_readme.py checks README against the .json)."""
    lines = ["| steps (NFE) | best pair of the field | best AYS / GITS pair | best karras pair | "
             "LML Calibrate | calibrated / best pair | calibration cost |",
             "|---|---|---|---|---|---|---|"]

    def cell(best):
        return "-" if best is None else f"{best['pair']} {best['rms']:.3g}"

    for nfe, line in result["steps"].items():
        c = line["calibrated"]
        lines.append(f"| {nfe} | {cell(line['best_pair'])} | "
                     f"{cell(line['best_node_schedule_pair'])} | {cell(line['best_karras'])} | "
                     f"{c['rms']:.3g} | **{line['ratio']:.2f}** | "
                     f"{c['model_evaluations']:,} evaluations, {c['seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def write(result, out: Path, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result, command))


def torch_threads(command: str) -> int:
    """The --threads of a recorded command line (default 1)."""
    found = re.search(r"--threads[ =](\d+)", command)
    return int(found.group(1)) if found else 1


def main(argv=None) -> int:
    """The committed run's sizes (DEFAULTS) are what a shared 2-core CPU affords: one
    per-sample model evaluation of this checkpoint (cfg: two UNet rows) costs about 0.06-0.15
    s there, the field alone is ~4,700 evaluations per test noise over the five step counts,
    and a calibration with 32 noises and 20 iterations tens of thousands per step count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default=",".join(map(str, STEPS)))
    parser.add_argument("--cfg", type=float, default=CFG)
    parser.add_argument("--noises", type=int, default=DEFAULTS["noises"],
                        help="test noises")
    parser.add_argument("--reference-steps", type=int, default=DEFAULTS["reference_steps"])
    parser.add_argument("--samples", type=int, default=DEFAULTS["samples"],
                        help="LML Calibrate's calibration noises")
    parser.add_argument("--iterations", type=int, default=DEFAULTS["iterations"],
                        help="LML Calibrate's iterations (its default: 20)")
    parser.add_argument("--screen", type=int, default=DEFAULTS["screen"],
                        help="test noises every pair runs on first (0: all on all)")
    parser.add_argument("--keep", type=int, default=DEFAULTS["keep"],
                        help="best pairs of the screen run on all test noises")
    parser.add_argument("--samplers", default=None, help="comma list (default: all)")
    parser.add_argument("--schedulers", default=None, help="comma list (default: all)")
    parser.add_argument("--size", type=int, default=SIZE, help="the test noises' pixels")
    parser.add_argument("--fit-size", type=int, default=None,
                        help="the calibration's pixels (default: --size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT, help="path without .md/.json")
    parser.add_argument("--report-only", action="store_true",
                        help="write the .md again from the .json")
    parser.add_argument("--resume", action="store_true",
                        help="keep the step counts the .json has from the same setup")
    args = parser.parse_args(argv)
    command = "python -m harness.digits_field" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
        if a not in ("--report-only", "--resume"))
    if args.report_only:
        result = json.loads(args.out.with_suffix(".json").read_text())
        args.out.with_suffix(".md").write_text(markdown(result, result.get("command", command)))
        print(readme_table(result))
        return 0
    pack = load_pack()
    import comfy.utils
    import torch

    torch.set_num_threads(args.threads)
    comfy.utils.PROGRESS_BAR_ENABLED = False
    started = time.perf_counter()

    def log(text):
        print(f"[{time.perf_counter() - started:7.0f} s] {text}", file=sys.stderr, flush=True)

    options = {}
    if args.iterations != pack.lml_core.CALIBRATE_DEFAULTS["iterations"]:
        options["iterations"] = args.iterations

    def save(result):
        result["command"] = command
        write(result, args.out, command)

    previous = {}
    if args.resume and args.out.with_suffix(".json").exists():
        previous = json.loads(args.out.with_suffix(".json").read_text())
    done, elapsed = {}, 0.0

    model, clip = load_digits()
    kwargs = dict(steps_list=[int(s) for s in args.steps.split(",")], cfg=args.cfg,
                  noises=args.noises, reference_steps=args.reference_steps,
                  samples=args.samples, options=options, screen=args.screen, keep=args.keep,
                  samplers=args.samplers and args.samplers.split(","),
                  schedulers=args.schedulers and args.schedulers.split(","), log=log,
                  size=args.size, fit_size=args.fit_size)
    if previous:
        probe = setup_of(pack, **kwargs)
        if previous.get("setup") == probe:
            done, elapsed = previous["steps"], float(previous.get("seconds", 0.0))
            log(f"resuming: {sorted(done, key=int)} measured before")
        else:
            log("resume: the file's setup differs; measuring everything")
    result = measure(pack, model, clip, on_step=save, done=done, elapsed_before=elapsed,
                     **kwargs)
    save(result)
    log(f"wrote {args.out.with_suffix('.md')} ({result['seconds'] / 60:.1f} min)")
    print(markdown(result, command))
    print(readme_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
