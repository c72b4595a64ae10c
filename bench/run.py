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
import time
from pathlib import Path

import torch

from lml_core import DEFAULTS, SOLVER_DEFAULTS, classify

from . import field, report
from .common import FLOW_SHIFT, KARRAS, initial_noise, sliced_w2
from .exact import EXACT_DATASETS
from .suite import (
    LML_DETERMINISTIC,
    LML_STOCHASTIC,
    NFES,
    NOISE_SEED,
    SCHEDULES,
    STOCHASTIC_NFES,
    WRAPPED,
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


def specs(names):
    return {name: (name, {}) for name in names}


def deterministic_specs(guided=False):
    names = field.DETERMINISTIC + (field.GUIDED_DETERMINISTIC if guided else ())
    return specs(names + LML_DETERMINISTIC)


def stochastic_specs(guided=False):
    names = field.STOCHASTIC + (field.GUIDED_STOCHASTIC if guided else ())
    return specs(names + LML_STOCHASTIC)


def exact_suite(args, log, scatter_path=None):
    det, sto, floors, panels = [], [], {}, {}
    for mixture, problem in exact_problems(args.names, args.samples, args.ref_steps,
                                           lambda _: NOISE_SEED, log):
        floors[problem.name] = problem.floor
        det += evaluate(problem, deterministic_specs(), args.nfes, log=log)
        if args.stochastic and problem.name in args.stochastic_data:
            sto += evaluate_stochastic(problem, stochastic_specs(), args.stochastic_nfes,
                                       args.seeds, log=log)
        if scatter_path is not None and mixture.dim == 2 and 6 in args.nfes:
            panels[problem.kind] = {"true": problem.truth}
            for s in ("euler", "ipndm_v", "lml_euler"):
                panels[problem.kind][f"{s}, 6 NFE"] = run_sampler(
                    problem.model, problem.x_start, problem.kind, s, 6)[0]
    if panels:
        report.scatter_2d(panels, scatter_path, "mix2d: true samples vs samplers at 6 NFE "
                          "(same noise; Karras top, flow shift 3 bottom)")
    return det, sto, floors


def digits_suite(args, log):
    """The class-conditional digits network with CFG.  Its target distribution is the converged
    guided ODE itself, so the stochastic samplers are scored against a second reference solution
    from fresh noise (floor: the two reference sets against each other)."""
    from .digits import CFGDigitsModel, load_or_train

    net, train_seconds = load_or_train(log, args.retrain_digits)
    log(f"  digits: model {'trained' if train_seconds else 'loaded'}")
    det, sto, floors = [], [], {}
    for cfg in args.cfg:
        name = f"digits cfg {cfg:g}"
        for kind in SCHEDULES:
            model = CFGDigitsModel(net, kind == "flow", cfg)
            noise, fresh = (torch.randn(args.samples("digits"), 64, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(seed))
                            for seed in (77, 78))
            problem = Problem(name, kind, model, noise, args.ref_steps, log=log)
            truth = chunked_reference(model, initial_noise(kind, fresh), kind, args.ref_steps)
            problem.truth, problem.floor = truth, {"sw2": sliced_w2(problem.reference, truth)}
            problem.distribution_metrics = lambda x, truth=truth: {"sw2": sliced_w2(x, truth)}
            floors[name] = problem.floor
            det += evaluate(problem, deterministic_specs(guided=True), args.nfes, log=log)
            if args.stochastic:
                sto += evaluate_stochastic(problem, stochastic_specs(guided=True),
                                           args.stochastic_nfes, args.seeds, log=log)
    return det, sto, floors, {"train_seconds": train_seconds}


def parse(argv):
    parser = argparse.ArgumentParser(description="LML quality benchmark against the host's "
                                                 "whole sampler field")
    parser.add_argument("--quick", action="store_true", help="a smoke run of every table (<1 min)")
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples for every data set (default: SAMPLES per data set)")
    parser.add_argument("--ref-steps", type=int, default=100, help="RK4 steps of the reference")
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


def main(argv=None):
    args = parse(argv)
    out = prepare(args)

    t_start, cpu_start = time.time(), time.process_time()
    log(f"LML benchmark: data {args.names}, samples {[args.samples(n) for n in args.names]}, "
        f"NFE {args.nfes}, stochastic "
        f"NFE {args.stochastic_nfes} x {len(args.seeds)} seeds, reference {args.ref_steps} RK4 "
        f"steps, {args.threads} threads")
    det, sto, floors = exact_suite(args, log, None if args.quick else out / "scatter_2d_6nfe.png")
    digits_info = None
    if not args.no_digits:
        d_det, d_sto, d_floors, digits_info = digits_suite(args, log)
        det, sto, floors = det + d_det, sto + d_sto, {**floors, **d_floors}
    cost = None
    if not args.no_cost:
        from .cost import measure

        cost = measure(log=log)
    wall, cpu = time.time() - t_start, time.process_time() - cpu_start
    host_names = field.host_sampler_names()
    samples = {n: args.samples(n) for n in [*args.names, "digits"]}
    meta = {"solver_defaults": SOLVER_DEFAULTS, "samples": samples, "nfes": args.nfes,
            "stochastic_nfes": args.stochastic_nfes, "seeds": args.seeds,
            "ref_rk4_steps": args.ref_steps, "karras": KARRAS, "flow_shift": FLOW_SHIFT,
            "floors": floors, "digits": digits_info, "cfg": list(args.cfg), "cost": cost,
            "wall_seconds": wall, "cpu_seconds": cpu, "threads": args.threads,
            "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(),
            "host_samplers": {name: classify(name) for name in host_names}}
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "deterministic": det, "stochastic": sto}, indent=1))
    write_markdown(out, det, sto, meta)
    if not args.quick:
        report.plot_metric(det, out / "error_vs_nfe.png")
        if sto:
            report.plot_metric(sto, out / "sw2_vs_nfe.png", "sw2", "sliced W2 vs target samples")
    log(f"done in {wall:.0f}s wall ({cpu:.0f}s CPU); wrote {out}")
    return det, sto, meta


def write_markdown(out, det, sto, meta):
    det_headline, _ = report.headline(det)
    lines = [
        "# LML quality benchmark: results", "",
        "Generated by `python -m bench` (samples: " + ", ".join(
            f"{k} {v}" for k, v in meta["samples"].items()) + "; reference: "
        f"{meta['ref_rk4_steps']} RK4 steps = {4 * meta['ref_rk4_steps'] + 1} NFE, "
        f"{meta['threads']} threads; {meta['wall_seconds']:.0f} s wall, "
        f"{meta['cpu_seconds']:.0f} s CPU). Built-in samplers: the host's own functions "
        "(ComfyUI's `comfy.samplers.sampler_object(name).sampler_function`), called with the "
        "schedule KSampler gives them. LML samplers with their shipped defaults: "
        f"`{DEFAULTS}` (lml_dpmpp_2m: "
        f"`{SOLVER_DEFAULTS['lml_dpmpp_2m']}`).", "",
        "## The field", "",
        "| host sampler | in this benchmark |", "|---|---|",
        *[f"| {name} | {group} |" for name, group in meta["host_samplers"].items()], "",
        "## Deterministic: best LML over best built-in", "",
        "Per point: the best LML sampler's RMS error over the best built-in's (names in "
        "parentheses); below 1 means LML is ahead.", "", det_headline, "",
        "## Deterministic: solver error", "",
        "RMS (per coordinate) distance to the reference solution of the same ODE from the same "
        "noise. Bold: an LML sampler below the best built-in at that NFE. `[n]`: the measured "
        "model calls where they differ from the budget (heun's 2 per step, ...).", "",
        report.error_tables(det), "",
        "## Deterministic: median per-sample error", "",
        "At high NFE a few samples that flip mode dominate the RMS; the median shows the "
        "typical sample.", "", report.error_tables(det, "median"), "",
        "## LML over the solver it wraps (RMS)", "", report.wrapped_table(det, WRAPPED), ""]
    if sto:
        sto_headline, _ = report.headline(sto, "sw2")
        lines += [
            "## Stochastic: best LML over best built-in (sliced W2)", "", sto_headline, "",
            "## Stochastic: sliced W2 to the target distribution", "",
            f"Median over {len(meta['seeds'])} noise seeds (range in parentheses), against fresh "
            "samples of the target: the mixture itself, or for digits the converged guided ODE "
            "from other noise. The floor is the same metric between two independent sets of "
            "the target: values near it cannot be told apart.", "",
            report.error_tables(sto, "sw2", spread=True), "",
            "## LML over the solver it wraps (sliced W2)", "",
            report.wrapped_table(sto, WRAPPED, "sw2"), ""]
    if meta.get("cost"):
        c = meta["cost"]
        lines += ["## Cost of the LM correction", "",
                  f"Latent {c['latent']}, conv model {c['model_gflops']:.1f} GFLOP per call, "
                  f"{c['threads']} threads, medians of {c['repeats']} runs:", "",
                  "| | median time | vs one model call |", "|---|---|---|",
                  f"| model call | {c['median_seconds']['model call'] * 1e3:.1f} ms | 1 |"]
        for k, v in c["overhead_vs_model_call"].items():
            lines.append(f"| LM correction, {k} | {c['median_seconds'][k] * 1e3:.2f} ms | "
                         f"{100 * v:.2f}% |")
        lines += ["", f"History memory: {c['history_note']}.", ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")
