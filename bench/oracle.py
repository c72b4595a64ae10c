"""How far a better choice could take LML Calibrate where it loses to the best pair (the exact
mixtures; ``--cfg``: the digits network too): python -m bench.oracle -> docs/bench/oracle.md /
.json.

Each uses the benchmark's own test noise, which no calibration may see: none is a sampler.
The first two bound what any choice made on a calibration's 32 noises could reach, the third
what the fit reaches with the scored samples in hand.

- **Candidates.** Every candidate of each calibration (its LML fits and the pair best on its
  fitting noise, unchanged) is scored on the test noise: "chosen" is what calibrate chose on
  its 8 selection noises (bench.calibrated's scoring), "oracle" the best candidate.
- **Start schedule.** The calibration with its field restricted to one host scheduler at a time
  (the LML starts and the pairs alike: bench.calibrated.restricted), for every scheduler:
  "oracle" the best of these and the whole field for each calibration seed, "best fixed" the
  one scheduler whose median over the seeds is lowest at the point.
- **In sample.** One calibration fitted and selected on the test noise itself (calibrate's
  split of it: half fits, a quarter selects, a quarter only scores; every start measured on
  all of its part, screen_rows 0), scored on all of it: what the fit reaches with the scored
  samples in hand; with the default robust loss and with plain least squares (ROBUST_SCALE so
  large that no noise is down-weighted, in the fit and in every choice).

Each on bench.calibrated's problems, calibration noises and seeds; ratios to the best pair of
docs/bench/calibrated.json (the same test noise).  A point's number is the median over the
seeds; the summaries are geometric means over the points.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from contextlib import contextmanager
from types import SimpleNamespace

import torch

from . import calibrated as cal
from .calibrated_page import MEDIAN_ABOVE
from .run import (
    SAMPLES,
    add_page_arguments,
    calibrated_points,
    log,
    page_only,
    prepare,
    write_page,
)
from .suite import geometric_mean


@contextmanager
def recorded_candidates():
    """Each calibrate call's choice and candidates ({label: (fit, theta)}), in call order, for
    the duration: lml_core.calibrate.Setup.report receives them all, so it is wrapped here and
    restored after (bench code only; the shipped fit is unchanged)."""
    setup = importlib.import_module("lml_core.calibrate").Setup
    original = setup.report
    calls = []

    def report(self, chosen, candidates, starts, test_starts):
        calls.append({"chosen": chosen["label"],
                      "candidates": {label: (c["fit"], c["theta"].clone())
                                     for label, c in candidates.items()}})
        return original(self, chosen, candidates, starts, test_starts)

    setup.report = report
    try:
        yield calls
    finally:
        setup.report = original


@contextmanager
def least_squares():
    """calibrate by plain least squares for the duration: lml_core.objective.ROBUST_SCALE so
    large that the robust weights are 1 and the robust loss is the mean square (in the fit,
    the start ranking and the choice), restored after."""
    objective = importlib.import_module("lml_core.objective")
    scale = objective.ROBUST_SCALE
    objective.ROBUST_SCALE = 1e6
    try:
        yield
    finally:
        objective.ROBUST_SCALE = scale


def in_sample(problem, nfe, best_rms: float) -> float:
    """The ratio of one calibration fitted and selected on the problem's test noise itself
    (every start measured on all of its fitting part), scored on all of it."""
    row, = cal.calibrated_rows(problem, [nfe], None, {"screen_rows": 0}, lambda *_: None,
                               noises=[problem.x_start.to(torch.float32)])
    return row["rms"] / best_rms


@torch.no_grad()
def scored_ratio(fit, theta, problem, best_rms: float) -> float:
    """A candidate's RMS on the problem's test noise over the best pair's.  The rows as the
    calibration ran them (the digits network's carry their class in two last coordinates,
    which the model keeps: bench.calibrated.for_calibration), against the reference with the
    same class coordinates, so the mean square is rescaled to the scored coordinates;
    ``final_errors`` reads only the reference's final sample."""
    _, x = cal.for_calibration(problem, problem.x_start.to(torch.float32))
    _, reference = cal.for_calibration(problem, problem.reference.to(torch.float32))
    errors = fit.final_errors(theta, x, SimpleNamespace(final=reference))
    share = x[0].numel() / problem.x_start[0].numel()
    return float((errors.pow(2).mean() * share).sqrt()) / best_rms


def point(problem, nfe, seeds, best_rms, schedulers=None) -> dict:
    """One point: per seed the calibrated ratio and every candidate's; per scheduler of the field
    (``schedulers``: only these) each seed's ratio with the field restricted to it; the
    in-sample calibrations' ratios (robust loss, least squares)."""
    with recorded_candidates() as calls:
        row, = cal.calibrated_rows(problem, [nfe], cal.CALIBRATION_SAMPLES, {}, lambda *_: None,
                                   seeds)
    chosen = [s["rms"] / best_rms for s in row["seeds"]]
    candidates = [{label: scored_ratio(fit, theta, problem, best_rms)
                   for label, (fit, theta) in call["candidates"].items()} for call in calls]
    for ratio, call, scored in zip(chosen, calls, candidates):
        if abs(scored[call["chosen"]] / ratio - 1) > 1e-3:
            raise RuntimeError(f"{problem.name}/{problem.kind} {nfe} NFE: the chosen candidate "
                               f"{call['chosen']} scores {scored[call['chosen']]:.6g}, its "
                               f"sampler {ratio:.6g}")
    field_schedulers = [s for s in cal.calibration_field(problem, nfe)[0]
                        if schedulers is None or s in schedulers]
    by_scheduler = {}
    for scheduler in field_schedulers:
        only, = cal.calibrated_rows(problem, [nfe], cal.CALIBRATION_SAMPLES, {},
                                    lambda *_: None, seeds, schedulers=[scheduler])
        by_scheduler[scheduler] = [s["rms"] / best_rms for s in only["seeds"]]
    robust = in_sample(problem, nfe, best_rms)
    with least_squares():
        squares = in_sample(problem, nfe, best_rms)
    return {"data": problem.name, "schedule": problem.kind, "nfe": nfe, "chosen": chosen,
            "chosen_labels": [call["chosen"] for call in calls], "candidates": candidates,
            "by_scheduler": by_scheduler, "in_sample": robust, "in_sample_squares": squares}


def oracles(p) -> dict:
    """A point's medians over the seeds: calibrated ("chosen"), the best candidate
    ("candidates"), the better of the whole field and the best one-scheduler field per seed
    ("schedulers") and the best fixed one-scheduler field ("fixed", its scheduler in
    "fixed_scheduler"); and the in-sample calibrations' ratios ("in_sample", with the robust
    loss; "in_sample_squares", by least squares)."""
    seeds = range(len(p["chosen"]))
    medians = {s: statistics.median(v) for s, v in p["by_scheduler"].items()}
    fixed = min(medians, key=medians.get)
    return {"chosen": statistics.median(p["chosen"]),
            "candidates": statistics.median(min(c.values()) for c in p["candidates"]),
            "schedulers": statistics.median(min(p["chosen"][i], *(
                v[i] for v in p["by_scheduler"].values())) for i in seeds),
            "fixed": medians[fixed], "fixed_scheduler": fixed,
            "in_sample": p["in_sample"], "in_sample_squares": p["in_sample_squares"]}


COLUMNS = (("chosen", "LML Calibrate"), ("candidates", "oracle: best candidate"),
           ("schedulers", "oracle: best field (whole or one scheduler) per seed"),
           ("fixed", "oracle: best fixed start scheduler"),
           ("in_sample", "fitted on the test noise"),
           ("in_sample_squares", "fitted on the test noise, least squares"))


def summary_lines(points) -> list[str]:
    """Per data set and over all: the geometric mean of each column and how many points are
    above MEDIAN_ABOVE (also README's, bench.readme)."""
    groups = {data: [p for p in points if p["data"] == data]
              for data in dict.fromkeys(p["data"] for p in points)}
    if len(groups) > 1:
        groups["all"] = points
    lines = ["| data | points | " + " | ".join(f"{title} (above {MEDIAN_ABOVE})"
                                              for _, title in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for data, group in groups.items():
        values = [oracles(p) for p in group]
        cells = [f"{geometric_mean(v[key] for v in values):.3f} "
                 f"({sum(v[key] > MEDIAN_ABOVE for v in values)})" for key, _ in COLUMNS]
        lines.append(f"| {data} | {len(group)} | " + " | ".join(cells) + " |")
    return lines


def markdown(data) -> str:
    meta, points = data["meta"], data["points"]
    lines = ["# How far a better choice could take LML Calibrate", "",
             f"`{meta['command']}` ({meta['seconds']:.0f} s; {meta['seeds']} calibration "
             "seeds, NFE " + ", ".join(map(str, meta["nfes"])) + "). Ratios: RMS on the "
             "benchmark's test noise over the best pair's (docs/bench/calibrated.json), the "
             "median over the seeds; the summary's geometric means over the points, in brackets "
             f"the points above {MEDIAN_ABOVE}. The three oracle columns choose "
             "by the test noise itself (bench/oracle.py says how): they bound what a choice on "
             "the calibration's own noise could reach, and are not samplers. The last two "
             "columns are one calibration each, fitted and selected on the test noise itself.",
             "",
             *summary_lines(points), "",
             "| point | " + " | ".join(title for _, title in COLUMNS) + " | best fixed "
             "scheduler | calibrate's choices |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for p in points:
        o = oracles(p)
        lines.append(f"| {p['data']}/{p['schedule']} {p['nfe']} NFE | "
                     + " | ".join(f"{o[key]:.3f}" for key, _ in COLUMNS)
                     + f" | {o['fixed_scheduler']} | {', '.join(p['chosen_labels'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="*", default=["mix2d", "mix64d", "sub3072d"])
    parser.add_argument("--cfg", nargs="*", type=float, default=[],
                        help="the digits network at these cfg values too")
    parser.add_argument("--nfes", nargs="*", type=int, default=[4, 6, 10])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--schedulers", nargs="*", default=None,
                        help="only these host schedulers in the start-schedule oracle")
    add_page_arguments(parser, "oracle")
    args = parser.parse_args(argv)
    out = prepare(args)
    if page_only(args, out, markdown):
        return None
    started = time.time()
    best = {key: p["best_rms"] for key, p in calibrated_points(out).items()}
    points = []
    for problem in cal.benchmark_problems(args.data, args.cfg, lambda name: SAMPLES[name],
                                          args.ref_steps, log):
        for nfe in args.nfes:
            points.append(point(problem, nfe, args.seeds, best[(problem.name, problem.kind, nfe)],
                                args.schedulers))
            o = oracles(points[-1])
            log(f"{problem.name}/{problem.kind} {nfe} NFE: " + ", ".join(
                f"{key} {o[key]:.3f}" for key, _ in COLUMNS))
    meta = {"seconds": time.time() - started, "seeds": args.seeds,
            "nfes": args.nfes, "schedulers": args.schedulers}
    return write_page(args, out, "bench.oracle", argv, meta, points, markdown)


if __name__ == "__main__":
    main()
