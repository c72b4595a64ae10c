"""Is the two-stage choice of the best pair (bench.pairs: every pair on a subset, the finalists
on all samples) the best pair?  python -m bench.pair_check -> docs/bench/pair_check.md.

Runs every (sampler, scheduler) pair on all the samples of a few problems and compares the
best of them with the pair the default benchmark's two stages choose (its PAIR_SAMPLES subset,
FINALISTS finalists; ``--subset`` overrides it), from the same noise in the same run.

It also says how optimistic "the best pair" is as a divisor: it is the best of ~117 pairs on
the very noise it is scored on.  ``split_choice``: the pair best on one half of the samples
(even or odd rows), scored on the other half against the best pair there; the geometric mean of
the two directions (1: the same pair wins on both halves).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from . import field, report
from .common import digits_noise, squared_errors
from .pairs import FINALISTS, best_pairs
from .run import PAIR_SAMPLES, SAMPLES, log, prepare
from .suite import NOISE_SEED, SCHEDULES, Problem, evaluate, exact_problems, geometric_mean


def digits_problem(cfg, kind, samples, ref_steps):
    from .digits import CFGDigitsModel, load_or_train

    net, _ = load_or_train(log)
    noise = digits_noise(samples)  # bench.run's noise
    return Problem(f"digits cfg {cfg:g}", kind, CFGDigitsModel(net, kind == "flow", cfg), noise,
                   ref_steps, log=log)


def with_squared_errors(problem):
    """extra_metrics for evaluate: each sample's mean squared error ("squared", a tensor)."""
    return lambda x: {"squared": squared_errors(x, problem.reference)}


def split_choice(rows) -> float:
    """How much worse the pair chosen on one half of the samples is on the other half than the
    best pair there: the geometric mean over the two directions (even rows choose, odd rows
    score; then the other way).  ``rows``: every pair at one NFE, each with "squared"."""
    # each pair's RMS on the even rows, then on the odd rows
    halves = [[float(r["squared"][first::2].mean().sqrt()) for r in rows] for first in (0, 1)]
    ratios = []
    for choose, score in ((0, 1), (1, 0)):
        pick = min(range(len(rows)), key=halves[choose].__getitem__)
        ratios.append(halves[score][pick] / min(halves[score]))
    return math.sqrt(ratios[0] * ratios[1])


def check(problem, nfes, subset):
    """(every pair on all samples, with each sample's squared error; the two stages' final
    rows)."""
    everything = []
    for scheduler in field.scheduler_names():
        specs = {name: (name, {}) for name in field.DETERMINISTIC}
        everything += evaluate(problem, specs, nfes, with_squared_errors(problem),
                               log=lambda _: None, scheduler=scheduler)
    chosen, _, _ = best_pairs(problem, field.DETERMINISTIC, nfes, subset, log=log)
    return everything, chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ref-steps", type=int, default=100)
    parser.add_argument("--nfes", nargs="*", type=int, default=[4, 5, 6, 8, 10])
    parser.add_argument("--data", nargs="*", default=["mix64d"])
    parser.add_argument("--cfg", nargs="*", type=float, default=[3.0])
    parser.add_argument("--subset", default="{}",
                        help='JSON over PAIR_SAMPLES, e.g. \'{"sub3072d": 50}\'')
    parser.add_argument("--name", default="pair_check", help="writes OUT/NAME.md")
    args = parser.parse_args(argv)
    subsets = {**PAIR_SAMPLES, **json.loads(args.subset)}
    out = prepare(args)
    started = time.time()
    problems = [p for _, p in exact_problems(args.data, lambda n: SAMPLES[n], args.ref_steps,
                                             lambda _: NOISE_SEED, log)]
    problems += [digits_problem(cfg, kind, SAMPLES["digits"], args.ref_steps)
                 for cfg in args.cfg for kind in SCHEDULES]
    lines = ["# Does the two-stage choice find the best pair?", "",
             "`python -m bench.pair_check`: every deterministic (sampler, scheduler) pair of the "
             "host on all the samples, against the pair the benchmark's two stages choose "
             f"(every pair on the first {subsets} samples, the {FINALISTS} best per NFE on "
             "all), from the same noise in one run. Ratio: the chosen pair's RMS over the best "
             "of all pairs' (1: the same pair, or one as good). Split choice: the pair best on "
             "one half of the samples (even or odd rows), its RMS on the other half over the "
             "best pair's there, the geometric mean of the two directions: how much better "
             "the best pair on the scored noise itself is than one chosen on other noise.", "",
             "| data / schedule | NFE | best of all pairs | its RMS | chosen pair | its RMS | "
             "ratio | rank of the chosen pair among all | split choice |",
             "|---|---|---|---|---|---|---|---|---|"]
    ratios, splits = [], {}
    for problem in problems:
        data = "digits" if problem.name.startswith("digits") else problem.name
        everything, chosen = check(problem, args.nfes, subsets[data])
        for nfe in args.nfes:
            at = [r for r in everything if r["nfe_budget"] == nfe]
            ranked = sorted(at, key=lambda r: r["rms"])
            top = ranked[0]
            pick = report.best([r for r in chosen if r["nfe_budget"] == nfe], "pair", "rms")
            rank = 1 + next(i for i, r in enumerate(ranked) if report.label(r) == report.label(
                pick))
            ratios.append(pick["rms"] / top["rms"])
            split = split_choice(at)
            splits.setdefault("digits" if data == "digits" else "exact mixtures", []).append(
                split)
            lines.append(f"| {problem.name} / {problem.kind} | {nfe} | {report.label(top)} | "
                         f"{top['rms']:.4f} | {report.label(pick)} | {pick['rms']:.4f} | "
                         f"{ratios[-1]:.3f} | {rank} of {len(ranked)} | {split:.3f} |")
    split_lines = "; ".join(
        f"{family} geometric mean {geometric_mean(v):.3f}, worst {max(v):.3f}, above 1 at "
        f"{sum(x > 1 + 1e-9 for x in v)} of {len(v)} points" for family, v in splits.items())
    lines += ["", f"Worst ratio {max(ratios):.3f}; the chosen pair is the best of all at "
              f"{sum(r == 1.0 for r in ratios)} of {len(ratios)} points. Split choice: "
              f"{split_lines}. Run time {time.time() - started:.0f} s, {args.threads} threads "
              "(a shared machine)."]
    Path(out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))


if __name__ == "__main__":
    main()
