"""The calibrated LML sampler against the whole deterministic field (python -m bench.calibrated,
bash scripts/bench.sh calibrated -> docs/bench/calibrated.md).

For each problem (the exact mixtures under Karras and flow schedules, the digits network at cfg
1, 3 and 6) and each NFE budget 4-10, ``lml_core.calibrate`` fits the sampler on 32 noises of
its own (a generator seeded apart from the benchmark's), with the default options, through the
same HostModel the built-ins get; the calibrated sampler then samples the benchmark's noise,
which it never saw, and is scored like every built-in: RMS distance to the reference ODE
solution from the same noise.  The calibration's cost (seconds, batched model calls,
per-sample evaluations) is recorded per point.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lml_core import CALIBRATE_DEFAULTS, calibrate, sample_lml_calibrated

from . import field, report
from .common import initial_noise, rms
from .exact import EXACT_DATASETS
from .pairs import FINALISTS, best_pairs
from .run import CFG_SCALES, PAIR_SAMPLES, SAMPLES, deterministic_specs, log, prepare
from .suite import (
    NOISE_SEED,
    SCHEDULES,
    Problem,
    evaluate,
    exact_problems,
    geometric_mean,
    sigmas_for,
    steps_for_nfe,
)

NFES = [4, 5, 6, 8, 10]
CALIBRATION_SAMPLES = 32
CALIBRATION_SEED = 31337  # apart from the benchmark's noise (NOISE_SEED, 77)
LABEL = "lml_calibrated"


def calibration_field(problem, nfe):
    """What calibrate measures at ``nfe`` on ``problem``, as LML Calibrate gives it in ComfyUI:
    (every host scheduler's sigmas that start where the problem's noise is, the host's
    deterministic samplers, their own sigmas where KSampler gives them other ones: its discard
    rule, fewer steps at the same model calls)."""
    start = float(sigmas_for("euler", problem.kind, nfe)[0])
    schedules = {}
    for scheduler in field.scheduler_names():
        try:
            sigmas = field.host_sigmas("euler", scheduler, problem.flow, nfe).to(torch.float32)
        except Exception:  # a scheduler the host cannot give here: not in the field
            continue
        if (len(sigmas) == nfe + 1 and torch.isfinite(sigmas).all()
                and abs(float(sigmas[0]) - start) <= 1e-4 * start):
            schedules[scheduler] = sigmas
    samplers = {name: field.host_function(name) for name in field.DETERMINISTIC}
    steps = {name: steps_for_nfe(name, nfe) for name in samplers}
    own = {name: {s: field.host_sigmas(name, s, problem.flow, steps[name]).to(torch.float32)
                  for s in schedules}
           for name in samplers if field.discards_penultimate(name) or steps[name] != nfe}
    return schedules, samplers, own


def calibrated_rows(problem, nfes, samples, options, log):
    """Rows of the calibrated sampler (fitted per NFE on its own noise in float32, as ComfyUI
    runs it, starting from the best pair it measures; sampling the problem's noise), with the
    calibration's cost."""
    rows = []
    dim = problem.x_start[0].numel()
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    noise = initial_noise(problem.kind, torch.randn(samples, dim, dtype=torch.float64,
                                                    generator=generator)).to(torch.float32)
    for nfe in nfes:
        sigmas = sigmas_for("euler", problem.kind, nfe)
        schedules, samplers, own = calibration_field(problem, nfe)
        host = field.HostModel(problem.model, flow=problem.flow)
        started = time.perf_counter()
        calibration = calibrate(host, noise, sigmas, schedules=schedules, samplers=samplers,
                                sampler_schedules=own, **options)
        seconds = time.perf_counter() - started
        sampler_host = field.HostModel(problem.model, flow=problem.flow)
        x = sample_lml_calibrated(sampler_host, problem.x_start.to(torch.float32), sigmas,
                                  calibration=calibration, samplers=samplers, disable=True)
        x = x.to(torch.float64)
        per_sample = ((x - problem.reference.double()) ** 2).reshape(x.shape[0], -1).mean(1)
        r = calibration.report
        rows.append({"data": problem.name, "schedule": problem.kind, "sampler": LABEL,
                     "scheduler": None, "nfe_budget": nfe, "nfe": sampler_host.calls,
                     "rms": rms(x, problem.reference),
                     "median": float(per_sample.sqrt().median()), "base": calibration.base,
                     "runs": calibration.sampler, "chosen": r["chosen"],
                     "calibrated": r["calibrated"], "iterations": r["iterations"],
                     "heldout_rms": r["heldout_rms"], "heldout_rms_base": r["heldout_rms_base"],
                     "cost": {"seconds": round(seconds, 2), "model_calls": r["model_calls"],
                              "evaluations": r["model_evaluations"]}})
        log(f"    {LABEL} {nfe:>2} NFE: rms {rows[-1]['rms']:.4f} ({r['chosen']}, "
            f"{r['iterations']} LM steps, {seconds:.1f}s, {r['model_evaluations']} evals)")
    return rows


def comparison(rows):
    """Per (data, schedule, nfe): the calibrated RMS over the best (sampler, scheduler) pair's
    ("ratio", the pair named) and over the best sampler on the fixed schedule's
    ("ratio_default"); CFG++ samplers excluded, as in the main benchmark."""
    out = []
    for cal in (r for r in rows if r["sampler"] == LABEL):
        at = [r for r in rows if (r["data"], r["schedule"], r["nfe_budget"]) == (
            cal["data"], cal["schedule"], cal["nfe_budget"])]
        pair, default = report.best(at, "pair", "rms"), report.best(at, "default", "rms")
        best = pair or default  # rows from before the field was pairs have no pair rows
        out.append({"data": cal["data"], "schedule": cal["schedule"], "nfe": cal["nfe_budget"],
                    "best": report.label(best), "best_sampler": best["sampler"],
                    "best_scheduler": best.get("scheduler"), "best_rms": best["rms"],
                    "calibrated": cal["rms"], "ratio": cal["rms"] / best["rms"],
                    "best_default": default["sampler"], "best_default_rms": default["rms"],
                    "ratio_default": cal["rms"] / default["rms"], "base": cal["base"],
                    "cost": cal["cost"]})
    return out


def summary(points, label):
    ratios = [p["ratio"] for p in points]
    worst = max(points, key=lambda p: p["ratio"])
    above = [p for p in points if p["ratio"] > 1.02]
    old = geometric_mean(p["ratio_default"] for p in points)
    return (f"| {label} | {len(points)} | {geometric_mean(ratios):.3f} | {worst['ratio']:.3f} "
            f"({worst['data']}/{worst['schedule']}, {worst['nfe']} NFE) | {len(above)} | "
            f"{old:.3f} |")


def write_markdown(out: Path, rows, points, meta):
    exact = [p for p in points if not p["data"].startswith("digits")]
    guided = [p for p in points if p["data"] in ("digits cfg 3", "digits cfg 6")]
    plain = [p for p in points if p["data"] == "digits cfg 1"]
    lines = [
        "# The calibrated LML sampler against the whole field",
        "",
        "`bash scripts/bench.sh calibrated` (python -m bench.calibrated). Each point: "
        f"`lml_core.calibrate` with the default options on {meta['calibration_samples']} noises "
        "of its own (seeded apart from the benchmark's), then the calibrated sampler on the "
        "benchmark's noise, which it never saw; RMS distance to the reference ODE solution from "
        "the same noise, against every deterministic built-in of the host run from its own code "
        "(CFG++ samplers run but do not count as the best built-in: they follow another ODE).",
        "",
        f"Samples per problem {meta['samples']}, reference {meta['ref_steps']} RK4 steps, "
        f"{meta['threads']} thread(s); run took {meta['wall_seconds']:.0f} s.",
        "",
        "**Cost.** One calibration with the default options of a 200-dimensional exact "
        "mixture, 10 Karras steps, 32 noises, on one thread: "
        + (f"{meta['cost_200d']['seconds']:.1f} s, {meta['cost_200d']['model_calls']} batched "
           f"model calls, {meta['cost_200d']['evaluations']} per-sample evaluations."
           if meta.get("cost_200d") else "not measured in this run."),
        "",
        "## Summary: calibrated RMS / best pair's RMS at the same NFE",
        "",
        "| problems | points | geometric mean | worst | points above 1.02 | geometric mean / "
        "best on default schedule |",
        "|---|---|---|---|---|---|",
    ]
    for group, label in ((exact, "exact mixtures (Karras + flow), NFE 4-10"),
                         (guided, "digits cfg 3 and 6 (Karras + flow), NFE 4-10"),
                         (plain, "digits cfg 1 (Karras + flow), NFE 4-10")):
        if group:
            lines.append(summary(group, label))
    lines += ["", "## Per point", "",
              "| data | schedule | NFE | best pair | its RMS | calibrated RMS | ratio | best on "
              "default schedule | its RMS | / best on default schedule | base "
              "| calibration cost (s, model calls, per-sample evaluations) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        c = p["cost"]
        lines.append(f"| {p['data']} | {p['schedule']} | {p['nfe']} | {p['best']} | "
                     f"{p['best_rms']:.4f} | {p['calibrated']:.4f} | {p['ratio']:.3f} | "
                     f"{p['best_default']} | {p['best_default_rms']:.4f} | "
                     f"{p['ratio_default']:.3f} | {p['base']} | {c['seconds']:.1f}, "
                     f"{c['model_calls']}, {c['evaluations']} |")
    lines += ["", "## The deterministic table (RMS; the calibrated sampler as lml_calibrated)",
              ""]
    lines.append(report.error_tables(rows))
    (out / "calibrated.md").write_text("\n".join(lines) + "\n")


def digits_problems(cfgs, samples, ref_steps, log):
    from .digits import CFGDigitsModel, load_or_train

    net, _ = load_or_train(log)
    for cfg in cfgs:
        for kind in SCHEDULES:
            noise = torch.randn(samples, 64, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(77))
            yield Problem(f"digits cfg {cfg:g}", kind, CFGDigitsModel(net, kind == "flow", cfg),
                          noise, ref_steps, log=log)


def cost_200d(log, steps=10, samples=CALIBRATION_SAMPLES):
    """Seconds and model calls of one calibration with the default options: a 200-D exact
    mixture (6 anisotropic components, as mix64d), a 10-step Karras schedule, 32 noises, on the
    current thread count."""
    from .exact import GaussianMixture, MixtureModel, _random_rotation

    gen = torch.Generator().manual_seed(200)
    k, dim = 6, 200
    variances = torch.exp(torch.empty(k, dim, dtype=torch.float64).uniform_(
        -5.3, -0.7, generator=gen))
    mixture = GaussianMixture("mix200d", torch.full((k,), 1.0 / k, dtype=torch.float64),
                              0.6 * torch.randn(k, dim, generator=gen, dtype=torch.float64),
                              torch.stack([_random_rotation(dim, gen) for _ in range(k)]),
                              variances, 0.0)
    host = field.HostModel(MixtureModel(mixture, False), flow=False)
    noise = initial_noise("karras", torch.randn(samples, dim, dtype=torch.float64,
                                                generator=gen))
    started = time.perf_counter()
    calibration = calibrate(host, noise, sigmas_for("euler", "karras", steps).double())
    seconds = time.perf_counter() - started
    r = calibration.report
    result = {"dim": dim, "steps": steps, "samples": samples, "seconds": round(seconds, 2),
              "threads": torch.get_num_threads(), "model_calls": r["model_calls"],
              "evaluations": r["model_evaluations"], "iterations": r["iterations"]}
    log(f"  cost: 200-D, {steps} steps, {samples} noises: {seconds:.1f} s, "
        f"{r['model_calls']} model calls, {r['model_evaluations']} evaluations")
    return result


def parse(argv):
    parser = argparse.ArgumentParser(description="calibrated LML vs the deterministic field")
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--quick", action="store_true", help="mix2d and digits cfg 3, 5 NFE")
    parser.add_argument("--ref-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", nargs="*", default=None)
    parser.add_argument("--cfg", nargs="*", type=float, default=None)
    parser.add_argument("--nfes", nargs="*", type=int, default=None)
    parser.add_argument("--schedules", nargs="*", default=None)
    parser.add_argument("--options", default="{}",
                        help="calibrate options as JSON (default: lml_core's defaults)")
    parser.add_argument("--cost-only", action="store_true",
                        help="only time one 200-D, 10-step calibration")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite calibrated.md from calibrated.json in --out")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    out = prepare(args)

    if args.cost_only:
        return cost_200d(log)
    if args.markdown_only:
        data = json.loads((out / "calibrated.json").read_text())
        write_markdown(out, data["rows"], data["points"], data["meta"])
        return data["rows"], data["points"]
    names = args.data if args.data is not None else (["mix2d"] if args.quick
                                                       else list(EXACT_DATASETS))
    cfgs = args.cfg if args.cfg is not None else ([3.0] if args.quick else list(CFG_SCALES))
    nfes = args.nfes or ([5] if args.quick else NFES)
    samples = (lambda name: 256) if args.quick else (lambda name: SAMPLES[name])
    ref_steps = 40 if args.quick else args.ref_steps
    options = json.loads(args.options)
    started = time.time()
    rows, all_selection, all_failures = [], [], []
    problems = [p for _, p in exact_problems(names, samples, ref_steps, lambda _: NOISE_SEED,
                                             log)]
    problems += list(digits_problems(cfgs, samples("digits"), ref_steps, log))
    problems = [p for p in problems if args.schedules is None or p.kind in args.schedules]
    pair_samples = {n: 64 if args.quick else PAIR_SAMPLES[n] for n in [*names, "digits"]}
    for problem in problems:
        guided = problem.name.startswith("digits")
        log(f"  {problem.name}/{problem.kind}")
        rows += evaluate(problem, deterministic_specs(guided=guided), nfes, log=log)
        subset = pair_samples["digits" if guided else problem.name]
        pair_rows, selection, failures = best_pairs(problem, field.DETERMINISTIC, nfes, subset,
                                                    log=log)
        rows += pair_rows
        all_selection += selection
        all_failures += failures
        rows += calibrated_rows(problem, nfes, CALIBRATION_SAMPLES, options, log)
    points = comparison(rows)
    cost = cost_200d(log)
    meta = {"cost_200d": cost, "calibration_samples": CALIBRATION_SAMPLES,
            "options": {**CALIBRATE_DEFAULTS, **options},
            "samples": {n: samples(n) for n in [*names, "digits"]}, "ref_steps": ref_steps,
            "nfes": nfes, "threads": args.threads, "pair_samples": pair_samples,
            "finalists": FINALISTS, "pair_failures": all_failures,
            "wall_seconds": time.time() - started}
    (out / "calibrated.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                     "points": points,
                                                     "pair_selection": all_selection}, indent=1))
    write_markdown(out, rows, points, meta)
    for p in points:
        log(f"{p['data']}/{p['schedule']} {p['nfe']:>2}: {p['ratio']:.3f} vs {p['best']} "
            f"({p['ratio_default']:.3f} vs {p['best_default']})")
    log(f"done in {time.time() - started:.0f}s; wrote {out / 'calibrated.md'}")
    return rows, points


if __name__ == "__main__":
    main()
