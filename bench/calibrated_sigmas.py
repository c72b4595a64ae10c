"""Calibrated sigmas for the host's own samplers against each sampler's best scheduler
(python -m bench.calibrated_sigmas, bash scripts/bench.sh sigmas ->
docs/bench/calibrated_sigmas.md).

For each problem, NFE budget and sampler, ``lml_core.calibrate_sigmas`` fits the sampler's
timesteps on 32 noises of its own, in float32 as ComfyUI runs it, starting from the best of
the host's schedulers on that noise (every scheduler's sigmas as KSampler gives them to that
sampler); the sampler then runs on the fitted sigmas from the benchmark's noise, which neither
fitted nor chose anything, and is scored like every pair: RMS distance to the reference ODE
solution from the same noise, against the same sampler on every scheduler.  Ancestral / SDE
samplers are fitted without their noise (eta and s_noise 0) and scored with their noise by the
stochastic metric (sliced W2 to fresh samples of the data, median over seeds), against the
same sampler's best scheduler by that metric: reported, not a target.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import time
from pathlib import Path

import torch

from lml_core import calibrate_sigmas, is_stochastic

from . import field
from .calibrated import (
    CALIBRATION_SAMPLES,
    CALIBRATION_SEED,
    benchmark_problems,
    for_calibration,
)
from .common import bootstrap_ratio, initial_noise, median_error, rms, squared_errors
from .oracle import least_squares
from .run import log, prepare
from .suite import geometric_mean, steps_for_nfe

SAMPLERS = ("dpmpp_2m", "euler", "uni_pc", "ipndm_v", "deis")
STOCHASTIC = ("dpmpp_2m_sde", "euler_ancestral")
NFES = (4, 6, 8, 10)
SEEDS = (0, 1, 2)  # the stochastic samplers' noise seeds


def quiet(name):
    """The host sampler without its fresh noise (eta and s_noise 0), as the node fits it."""
    function = field.host_function(name)
    if not is_stochastic(name):
        return function
    accepts = inspect.signature(function).parameters
    return functools.partial(function, **{k: 0.0 for k in ("eta", "s_noise") if k in accepts})


def pair_schedules(problem, name, steps) -> dict:
    """{scheduler: sigmas} KSampler gives ``name`` at ``steps`` on the problem's model_sampling,
    those that start where the problem's noise is (sigma_max) and have ``steps`` steps."""
    out = {}
    for scheduler in field.scheduler_names():
        sigmas = field.host_sigmas(name, scheduler, problem.flow, steps).to(torch.float32)
        if len(sigmas) == steps + 1 and abs(float(sigmas[0]) - float(
                problem.start_sigma)) <= 1e-4 * float(problem.start_sigma):
            out[scheduler] = sigmas
    return out


def run(name, problem, sigmas, seed=0):
    host = field.HostModel(problem.model, flow=problem.flow)
    x = field.host_function(name)(host, problem.x_start.to(torch.float32), sigmas.clone(),
                                  extra_args={"seed": seed}, disable=True)
    return x, host.calls


def score(name, problem, sigmas):
    """(RMS to the reference, the median per-sample error, the per-sample squared errors) for
    a deterministic sampler; (the median sliced W2 over SEEDS, None, None) for a stochastic
    one."""
    if not is_stochastic(name):
        x = run(name, problem, sigmas)[0]
        return (rms(x, problem.reference), median_error(x, problem.reference),
                squared_errors(x, problem.reference))
    values = sorted(problem.distribution_metrics(run(name, problem, sigmas, seed)[0])["sw2"]
                    for seed in SEEDS)
    return values[len(values) // 2], None, None


def point(problem, name, nfe, noise, **options):
    steps = steps_for_nfe(name, nfe)
    schedules = pair_schedules(problem, name, steps)
    scored = {scheduler: score(name, problem, sigmas) for scheduler, sigmas in schedules.items()}
    field_scores = {scheduler: value for scheduler, (value, _, _) in scored.items()}
    best = min(field_scores, key=field_scores.get)
    model, noise = for_calibration(problem, noise)
    host = field.HostModel(model, flow=problem.flow)
    started = time.perf_counter()
    calibration = calibrate_sigmas(host, noise, schedules[best], quiet(name),
                                   sampler_name=name, schedules=schedules, **options)
    seconds = time.perf_counter() - started
    fitted = torch.tensor(calibration.sigmas, dtype=torch.float32)
    calibrated, calibrated_median, squared = score(name, problem, fitted)
    r = calibration.report
    medians = {scheduler: m for scheduler, (_, m, _) in scored.items() if m is not None}
    # how much of the ratio the test noise decides (deterministic samplers)
    interval = None if squared is None else bootstrap_ratio([squared], scored[best][2])
    return {"data": problem.name, "schedule": problem.kind, "sampler": name, "nfe": nfe,
            "steps": steps, "metric": "sw2" if is_stochastic(name) else "rms",
            "best_scheduler": best, "best": field_scores[best], "calibrated": calibrated,
            "ratio": calibrated / field_scores[best], "chosen": r["chosen"],
            "schedulers": field_scores, "medians": medians,
            "calibrated_median": calibrated_median, "ratio_interval": interval,
            "cost": {"seconds": round(seconds, 2), "evaluations": r["model_evaluations"]}}


def breakdown(points, key, title) -> str:
    """"Title: a 0.5 (worst 1.2), ...": the geometric mean and worst ratio per ``key``."""
    groups = {}
    for p in points:
        groups.setdefault(key(p), []).append(p["ratio"])
    return f"{title}: " + ", ".join(f"{name} {geometric_mean(r):.3f} (worst {max(r):.2f})"
                                    for name, r in groups.items()) + "."


def short_line(points) -> str:
    """The deterministic samplers in one line: geometric mean, points above 1.02, by problem."""
    points = [p for p in points if p["metric"] == "rms"]
    ratios = [p["ratio"] for p in points]
    return (f"geometric mean {geometric_mean(ratios):.3f}, {sum(r > 1.02 for r in ratios)} of "
            f"{len(ratios)} points above 1.02; "
            + breakdown(points, lambda p: f"{p['data']} {p['schedule']}", "by problem"))


def typical_line(points) -> str:
    """Per problem: the geometric mean of the calibrated median per-sample error over the
    smallest median error of the same sampler on any scheduler, and of RMS / median error
    for the calibrated sigmas and for the best scheduler (by RMS)."""
    groups = {}
    for p in points:
        groups.setdefault(f"{p['data']} {p['schedule']}", []).append(p)
    cells = []
    for name, group in groups.items():
        median = geometric_mean(p["calibrated_median"] / min(p["medians"].values())
                                for p in group)
        tail = geometric_mean(p["calibrated"] / p["calibrated_median"] for p in group)
        tail_best = geometric_mean(p["best"] / p["medians"][p["best_scheduler"]]
                                   for p in group)
        cells.append(f"{name} {median:.3f} (RMS / median {tail:.2f} against {tail_best:.2f})")
    return ("Typical error (the median per-sample error instead of the RMS; calibrated over the "
            "smallest median of the same sampler on any scheduler, geometric mean; in brackets "
            "RMS / median error of the calibrated sigmas and of the best scheduler): "
            + ", ".join(cells) + ".")


def interval_lines(points) -> list[str]:
    """Of the points above 1.02, those above it over their whole bootstrap interval (the
    test noise resampled): what the test noise does not decide."""
    above = [p for p in points if p["ratio"] > 1.02 and p.get("ratio_interval")]
    if not above:
        return []
    sure = [p for p in above if p["ratio_interval"][0] > 1.02]
    names = ", ".join(f"{p['sampler']} {p['data']}/{p['schedule']} {p['nfe']} NFE "
                      f"{p['ratio']:.2f} ({p['ratio_interval'][0]:.2f}-"
                      f"{p['ratio_interval'][1]:.2f})" for p in sure) or "none"
    return [f"Of the {len(above)} points above 1.02, {len(sure)} are above it over the whole "
            "90% bootstrap interval of the ratio (the benchmark's test samples resampled, the "
            f"same rows for both): {names}.", ""]


def summary_lines(points) -> list[str]:
    """The summary: deterministic samplers (geometric mean, worst, points above 1.02, by
    problem and by sampler) and the stochastic ones' range (also README's, bench.readme)."""
    deterministic = [p for p in points if p["metric"] == "rms"]
    lines = []
    if deterministic:
        ratios = [p["ratio"] for p in deterministic]
        worst = max(deterministic, key=lambda p: p["ratio"])
        lines += [f"**Deterministic samplers: geometric mean {geometric_mean(ratios):.3f}, "
                  f"worst {worst['ratio']:.3f} ({worst['sampler']}, {worst['data']}/"
                  f"{worst['schedule']}, {worst['nfe']} NFE), "
                  f"{sum(r > 1.02 for r in ratios)} of {len(ratios)} points above 1.02.**", ""]
        lines += interval_lines(deterministic)
        lines += [breakdown(deterministic, lambda p: f"{p['data']} {p['schedule']}",
                            "By problem"), "",
                  breakdown(deterministic, lambda p: p["sampler"], "By sampler"), ""]
        typical = [p for p in deterministic if p.get("medians") and p.get("calibrated_median")]
        if typical:
            lines += [typical_line(typical), ""]
    stochastic = [p for p in points if p["metric"] != "rms"]
    if stochastic:
        ratios = [p["ratio"] for p in stochastic]
        lines += [f"Stochastic samplers (sliced W2): {min(ratios):.2f}-{max(ratios):.2f}x their "
                  f"best scheduler, geometric mean {geometric_mean(ratios):.3f} over "
                  f"{len(ratios)} points.", ""]
    return lines


def write_markdown(out: Path, points, meta, name="calibrated_sigmas"):
    noise = (f"{meta['calibration_samples']} float32 noises of its own" if not meta.get(
        "in_sample") else "the benchmark's test noise itself (an oracle, not a sampler: "
                          "--in-sample; every start measured on all of its fitting part)"
                          + (", by plain least squares" if meta.get("least_squares") else ""))
    scored = ("the benchmark's noise, which neither fitted nor chose anything" if not meta.get(
        "in_sample") else "the same noise")
    lines = [
        "# Calibrated sigmas against each sampler's best scheduler",
        "",
        "`bash scripts/bench.sh sigmas` (python -m bench.calibrated_sigmas). Each point: "
        f"`lml_core.calibrate_sigmas` on {noise}"
        + (f" with the options `{json.dumps(meta['options'])}`" if meta.get("options") else "")
        + ", "
        f"started from the sampler's best scheduler on that noise; scored on {scored}, "
        "against the same sampler on every "
        "host scheduler (KSampler's sigmas, its discard rule) at the same steps. "
        f"Samples per problem {meta['samples']}; run took {meta['wall_seconds']:.0f} s on "
        f"{meta['threads']} thread(s) of a shared 2-core machine.",
        "",
    ]
    lines += summary_lines(points)
    lines += ["| data | schedule | sampler | NFE | metric | best scheduler | its error | "
              "calibrated | ratio (90% interval over the test samples) | chosen | cost (s, "
              "evaluations) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        interval = (" ({:.2f}-{:.2f})".format(*p["ratio_interval"])
                    if p.get("ratio_interval") else "")
        lines.append(f"| {p['data']} | {p['schedule']} | {p['sampler']} | {p['nfe']} | "
                     f"{p['metric']} | {p['best_scheduler']} | {p['best']:.4f} | "
                     f"{p['calibrated']:.4f} | {p['ratio']:.3f}{interval} | {p['chosen']} | "
                     f"{p['cost']['seconds']:.1f}, {p['cost']['evaluations']} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def parse(argv):
    parser = argparse.ArgumentParser(description="calibrated sigmas vs each sampler's best "
                                                 "scheduler")
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", nargs="*", default=["mix64d"])
    parser.add_argument("--cfg", nargs="*", type=float, default=[3.0])
    parser.add_argument("--nfes", nargs="*", type=int, default=list(NFES))
    parser.add_argument("--samplers", nargs="*", default=[*SAMPLERS, *STOCHASTIC])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--ref-steps", type=int, default=100)
    parser.add_argument("--calibration-samples", type=int, default=CALIBRATION_SAMPLES,
                        help="noises each calibration fits, selects and tests on")
    parser.add_argument("--in-sample", action="store_true",
                        help="fit and select on the benchmark's test noise itself (an oracle: "
                             "what the fit reaches with the scored samples in hand)")
    parser.add_argument("--least-squares", action="store_true",
                        help="calibrate by plain least squares (bench.oracle.least_squares)")
    parser.add_argument("--options", type=json.loads, default={},
                        help='calibrate_sigmas options as JSON, e.g. \'{"screen_rows": 0}\'')
    parser.add_argument("--name", default="calibrated_sigmas",
                        help="writes OUT/NAME.md and NAME.json")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite OUT/NAME.md from OUT/NAME.json")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    out = prepare(args)
    if args.markdown_only:
        data = json.loads((out / f"{args.name}.json").read_text())
        return write_markdown(out, data["points"], data["meta"], args.name)
    started = time.time()
    problems = benchmark_problems(args.data, args.cfg, args.samples, args.ref_steps, log)
    points = []
    with least_squares() if args.least_squares else contextlib.nullcontext():
        for problem in problems:
            points += problem_points(problem, args)
    meta = {"samples": args.samples, "nfes": args.nfes, "threads": args.threads,
            "calibration_samples": args.calibration_samples, "in_sample": args.in_sample,
            "least_squares": args.least_squares, "wall_seconds": time.time() - started}
    if args.options:
        meta["options"] = args.options
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "points": points},
                                                      indent=1))
    write_markdown(out, points, meta, args.name)
    log(f"done in {time.time() - started:.0f}s; wrote {out / f'{args.name}.md'}")
    return points


def problem_points(problem, args) -> list[dict]:
    """The points of one problem: every sampler of ``args`` at every NFE, calibrated on its
    own noise (or, ``--in-sample``, on the test noise with every start measured on all of it)."""
    problem.start_sigma = float(field.host_sigmas("euler", "karras", problem.flow, 4)[0])
    if args.in_sample:
        noise, options = problem.x_start.to(torch.float32), {"screen_rows": 0}
    else:
        generator = torch.Generator().manual_seed(CALIBRATION_SEED)
        noise = initial_noise(problem.kind, torch.randn(
            args.calibration_samples, problem.x_start[0].numel(), dtype=torch.float64,
            generator=generator)).to(torch.float32)
        options = {}
    options = {**options, **args.options}
    points = []
    for name in args.samplers:
        if is_stochastic(name) and problem.distribution_metrics is None:
            continue  # no stochastic metric on this problem
        for nfe in args.nfes:
            points.append(point(problem, name, nfe, noise, **options))
            p = points[-1]
            log(f"  {problem.name}/{problem.kind} {name} {nfe} NFE: {p['ratio']:.3f} "
                f"({p['calibrated']:.4f} vs {p['best_scheduler']} {p['best']:.4f}; "
                f"{p['chosen']})")
    return points


if __name__ == "__main__":
    main()
