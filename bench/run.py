"""The quality benchmark (python -m bench): see the Benchmark section of README.md.

Deterministic table: every deterministic sampler of the host and every deterministic LML sampler
at each NFE budget, RMS (and median per-sample) distance to the reference ODE solution from the
same noise.  Stochastic table: every stochastic sampler of the host and every stochastic LML
sampler, sliced W2 to fresh samples of the target distribution (median and range over seeds).
Data: the exact-score mixtures (Karras and flow schedules) and the class-conditional digits
network with classifier-free guidance at several scales (where the CFG++ samplers join).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from lml_core import SOLVER_DEFAULTS, classify

from . import field, report
from .common import FLOW_SHIFT, KARRAS, digits_noise, initial_noise, sliced_w2
from .exact import EXACT_DATASETS
from .pairs import FINALISTS, best_pairs, placements
from .results_page import write_markdown
from .suite import (
    LML_DETERMINISTIC,
    LML_STOCHASTIC,
    NFES,
    NOISE_SEED,
    SCHEDULES,
    STOCHASTIC_NFES,
    Problem,
    chunked_reference,
    evaluate,
    evaluate_stochastic,
    exact_problems,
    run_sampler,
)

CFG_SCALES = (1.0, 3.0, 6.0)
STOCHASTIC_DATA = ("mix2d", "mix64d")  # the exact sets the stochastic table runs on (+ digits)
# Samples per data set: as many as the 10-minute budget on 2 cores allows (each model call on
# sub3072d costs ~20x one on mix64d).
SAMPLES = {"mix2d": 2000, "mix64d": 1000, "sub3072d": 500, "digits": 500}


# Samples of each data set on which every (sampler, scheduler) pair runs to choose the finalists
# (bench.pairs): a quarter of SAMPLES; all of sub3072d's, whose pairs' errors are carried by a
# few samples: a tenth (50) missed its best pair at 6 of 10 points, by up to 1.21x
# (docs/bench/pair_check.md); all 500 find it at every point (pair_check_sub3072d.md) for
# about 2.5 minutes more of one core.
PAIR_SAMPLES = {"mix2d": 500, "mix64d": 250, "sub3072d": 500, "digits": 125}
# The pairs run at the budgets up to 10 NFE, where the schedule matters most and the calibrated
# sampler competes: up to 20 NFE the mix2d/karras problem's pairs alone took 93 s
# (deterministic) and 207 s (stochastic) on the shared 2 cores, which would take the default
# run past 20 minutes (on these small problems Python per step, not arithmetic, dominates a
# run, so a subset of the samples saves less than its size).  Above it the tables bound the
# ratio to the best pair by the ratio to the best sampler on the fixed schedule.
PAIR_NFE_MAX = 10


def specs(names):
    return {name: (name, {}) for name in names}


def deterministic_specs(guided=False):
    names = field.DETERMINISTIC + (field.GUIDED_DETERMINISTIC if guided else ())
    return specs(names + LML_DETERMINISTIC)


def stochastic_specs(guided=False):
    names = field.STOCHASTIC + (field.GUIDED_STOCHASTIC if guided else ())
    return specs(names + LML_STOCHASTIC)


class Results:
    """The rows of a run: fixed-schedule and pair rows, the pair selection records and the
    pairs that failed, the floors, and seconds per stage."""

    def __init__(self):
        self.det, self.sto, self.floors = [], [], {}
        self.selection = {"deterministic": [], "stochastic": []}
        self.failures, self.seconds = [], defaultdict(float)

    def timed(self, stage, fn, *args, **kwargs):
        t0 = time.time()
        out = fn(*args, **kwargs)
        self.seconds[stage] += time.time() - t0
        return out

    def add_pairs(self, out, stochastic):
        rows, selection, failures = out
        (self.sto if stochastic else self.det).extend(rows)
        self.selection["stochastic" if stochastic else "deterministic"] += selection
        self.failures += failures


def run_problem(args, results, problem, guided, stochastic, log):
    """Every table's rows for one problem: the fixed-schedule samplers (LML included), then the
    best (sampler, scheduler) pairs of the host's deterministic and stochastic groups."""
    results.floors[problem.name] = problem.floor
    data = "digits" if problem.name.startswith("digits") else problem.name
    subset = args.pair_samples(data)
    results.det += results.timed("fixed schedule", evaluate, problem,
                                 deterministic_specs(guided), args.nfes, log=log)
    results.add_pairs(results.timed("pairs", best_pairs, problem, field.DETERMINISTIC,
                                    args.pair_nfes, subset, log=log), False)
    if stochastic:
        results.sto += results.timed("fixed schedule", evaluate_stochastic, problem,
                                     stochastic_specs(guided), args.stochastic_nfes, args.seeds,
                                     log=log)
        results.add_pairs(results.timed("pairs", best_pairs, problem, field.STOCHASTIC,
                                        args.pair_stochastic_nfes, subset, stochastic=True,
                                        seeds=args.seeds, log=log), True)


def exact_suite(args, results, log, scatter_path=None):
    panels = {}
    for mixture, problem in exact_problems(args.names, args.samples, args.ref_steps,
                                           lambda _: NOISE_SEED, log):
        run_problem(args, results, problem, False,
                    args.stochastic and problem.name in args.stochastic_data, log)
        if scatter_path is not None and mixture.dim == 2 and 6 in args.nfes:
            panels[problem.kind] = {"true": problem.truth}
            for s in ("euler", "ipndm_v", "lml_euler"):
                panels[problem.kind][f"{s}, 6 NFE"] = run_sampler(
                    problem.model, problem.x_start, problem.kind, s, 6)[0]
    if panels:
        report.scatter_2d(panels, scatter_path, "mix2d: true samples vs samplers at 6 NFE "
                          "(same noise; Karras top, flow shift 3 bottom)")


def digits_suite(args, results, log):
    """The class-conditional digits network with CFG.  Its target distribution is the converged
    guided ODE itself, so the stochastic samplers are scored against a second reference solution
    from fresh noise (floor: the two reference sets against each other)."""
    from .digits import CFGDigitsModel, load_or_train

    net, train_seconds = load_or_train(log, args.retrain_digits)
    log(f"  digits: model {'trained' if train_seconds else 'loaded'}")
    for cfg in args.cfg:
        name = f"digits cfg {cfg:g}"
        for kind in SCHEDULES:
            model = CFGDigitsModel(net, kind == "flow", cfg)
            noise, fresh = (digits_noise(args.samples("digits"), draw) for draw in (0, 1))
            problem = Problem(name, kind, model, noise, args.ref_steps, log=log)
            truth = chunked_reference(model, initial_noise(kind, fresh), kind, args.ref_steps)
            problem.truth, problem.floor = truth, {"sw2": sliced_w2(problem.reference, truth)}
            problem.distribution_metrics = lambda x, truth=truth: {"sw2": sliced_w2(x, truth)}
            run_problem(args, results, problem, True, args.stochastic, log)
    return {"train_seconds": train_seconds}


def parse(argv):
    parser = argparse.ArgumentParser(description="LML quality benchmark against the host's "
                                                 "whole sampler field")
    parser.add_argument("--quick", action="store_true", help="a smoke run of every table (<1 min)")
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples for every data set (default: SAMPLES per data set)")
    parser.add_argument("--pair-samples", type=int, default=None,
                        help="samples on which every (sampler, scheduler) pair runs "
                             "(default: PAIR_SAMPLES per data set)")
    parser.add_argument("--ref-steps", type=int, default=100, help="RK4 steps of the reference")
    parser.add_argument("--pair-nfe-max", type=int, default=PAIR_NFE_MAX,
                        help="the largest NFE budget at which every pair runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="noise seeds per stochastic point")
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument("--no-stochastic", action="store_true")
    parser.add_argument("--no-cost", action="store_true")
    parser.add_argument("--retrain-digits", action="store_true")
    parser.add_argument("--data", nargs="*", default=None, help="exact data sets to run")
    args = parser.parse_args(argv)
    args.stochastic = not args.no_stochastic
    if args.quick:
        args.names, fixed, args.ref_steps = ["mix2d"], 256, 40
        args.nfes, args.stochastic_nfes, args.seeds = [5, 10], [6, 10], [0, 1]
        args.cfg, args.no_cost = (3.0,), True
    else:
        args.names, fixed = list(EXACT_DATASETS), args.samples
        args.nfes, args.stochastic_nfes = NFES, STOCHASTIC_NFES
        args.seeds, args.cfg = list(range(args.seeds)), CFG_SCALES
    args.samples = lambda name, fixed=fixed: fixed or SAMPLES[name]
    # The smoke run sweeps the pairs at its first budget only, on 32 samples.
    pair_fixed = args.pair_samples or (32 if args.quick else None)
    args.pair_nfes, args.pair_stochastic_nfes = (
        (nfes[:1] for nfes in (args.nfes, args.stochastic_nfes)) if args.quick else
        ([n for n in nfes if n <= args.pair_nfe_max] for nfes in (args.nfes,
                                                                 args.stochastic_nfes)))
    args.pair_samples = lambda name: min(pair_fixed or PAIR_SAMPLES[name], args.samples(name))
    args.names = args.data or args.names
    args.stochastic_data = STOCHASTIC_DATA if not args.quick else tuple(args.names)
    return args


def log(msg):
    print(msg, flush=True)


def prepare(args) -> Path:
    """Thread count and output folder of a benchmark command."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def add_page_arguments(parser, name: str):
    """What a benchmark that writes docs/bench/NAME.md / .json beside calibrated.json takes:
    the reference's steps, threads, the folder, the name and --markdown-only."""
    parser.add_argument("--ref-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--name", default=name)
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite OUT/NAME.md from OUT/NAME.json")


def page_only(args, out: Path, markdown) -> bool:
    """With --markdown-only: OUT/NAME.md rewritten from OUT/NAME.json by ``markdown``, True."""
    if args.markdown_only:
        data = json.loads((out / f"{args.name}.json").read_text())
        (out / f"{args.name}.md").write_text(markdown(data))
    return args.markdown_only


def write_page(args, out: Path, module: str, argv, meta: dict, points: list, markdown) -> dict:
    """OUT/NAME.json ({"meta": the command run and ``meta``, "points"}) and its page."""
    command = f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])
    data = {"meta": {"command": command.strip(), **meta}, "points": points}
    (out / f"{args.name}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{args.name}.md").write_text(markdown(data))
    log(f"wrote {out / args.name}.md")
    return data


def calibrated_points(out: Path) -> dict:
    """OUT/calibrated.json's points by (data, schedule, nfe): the best pairs to divide by."""
    return {(p["data"], p["schedule"], p["nfe"]): p
            for p in json.loads((out / "calibrated.json").read_text())["points"]}


def main(argv=None):
    args = parse(argv)
    out = prepare(args)

    t_start, cpu_start = time.time(), time.process_time()
    log(f"LML benchmark: data {args.names}, samples {[args.samples(n) for n in args.names]}, "
        f"NFE {args.nfes}, stochastic "
        f"NFE {args.stochastic_nfes} x {len(args.seeds)} seeds, reference {args.ref_steps} RK4 "
        f"steps, {args.threads} threads")
    results = Results()
    exact_suite(args, results, log, None if args.quick else out / "scatter_2d_6nfe.png")
    digits_info = None
    if not args.no_digits:
        digits_info = digits_suite(args, results, log)
    cost = None
    if not args.no_cost:
        from .cost import measure

        cost = results.timed("cost", measure, log=log)
    wall, cpu = time.time() - t_start, time.process_time() - cpu_start
    host_names = field.host_sampler_names()
    samples = {n: args.samples(n) for n in [*args.names, "digits"]}
    meta = {"solver_defaults": SOLVER_DEFAULTS, "samples": samples, "nfes": args.nfes,
            "stochastic_nfes": args.stochastic_nfes, "seeds": args.seeds,
            "ref_rk4_steps": args.ref_steps, "karras": KARRAS, "flow_shift": FLOW_SHIFT,
            "floors": results.floors, "digits": digits_info, "cfg": list(args.cfg),
            "cost": cost, "wall_seconds": wall, "cpu_seconds": cpu,
            "stage_seconds": dict(results.seconds), "threads": args.threads,
            "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "torch": torch.__version__, "python": platform.python_version(),
            "host_samplers": {name: classify(name) for name in host_names},
            "host_schedulers": {"karras": placements(False), "flow": placements(True)},
            "pair_samples": {n: args.pair_samples(n) for n in samples},
            "pair_nfes": args.pair_nfes, "pair_stochastic_nfes": args.pair_stochastic_nfes,
            "finalists": FINALISTS, "pair_failures": results.failures}
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "deterministic": results.det, "stochastic": results.sto,
         "pair_selection": results.selection}, indent=1))
    write_markdown(out, results.det, results.sto, meta)
    if not args.quick:
        report.plot_metric(results.det, out / "error_vs_nfe.png")
        if results.sto:
            report.plot_metric(results.sto, out / "sw2_vs_nfe.png", "sw2",
                               "sliced W2 vs target samples")
    log(f"done in {wall:.0f}s wall ({cpu:.0f}s CPU); wrote {out}")
    return results.det, results.sto, meta
