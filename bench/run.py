"""The quality benchmark (python -m bench): see the Benchmark section of README.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from lml_core import DEFAULTS

from . import report
from .common import FLOW_SHIFT, KARRAS, mode_weight_error, sliced_w2
from .exact import EXACT_DATASETS
from .suite import (
    BASELINE_NAMES,
    NFES,
    NOISE_SEED,
    SCHEDULES,
    WRAPPED,
    Problem,
    evaluate,
    exact_problems,
    run_sampler,
)


def sampler_specs():
    """The baselines and the LML samplers with the node defaults (options.DEFAULTS)."""
    return {name: (name, {}) for name in BASELINE_NAMES + tuple(WRAPPED)}


def exact_suite(names, samples, ref_steps, nfes, log, scatter_path=None):
    rows, floors, panels, truth = [], {}, {}, {}
    for mixture, problem in exact_problems(names, samples, ref_steps, lambda _: NOISE_SEED, log):
        name, kind = problem.name, problem.kind
        if name not in truth:
            truth[name] = mixture.sample(samples, torch.Generator().manual_seed(11))[0]
            true2, labels2 = mixture.sample(samples, torch.Generator().manual_seed(12))
            floors[name] = {"sw2_true_vs_true": sliced_w2(true2, truth[name]),
                            "mode_tv_true": mode_weight_error(labels2, mixture.weights)}

        def metrics(x, mixture=mixture, true=truth[name]):
            x = x.reshape(x.shape[0], -1)
            labels = mixture.responsibilities(x, 0.01).argmax(1)
            return {"sw2": sliced_w2(x, true),
                    "mode_tv": mode_weight_error(labels, mixture.weights)}

        rows += evaluate(problem, sampler_specs(), nfes, metrics, log=log)
        for r in rows[-len(sampler_specs()) * len(nfes):]:
            r["ref_check"] = problem.ref_check
        if scatter_path is not None and mixture.dim == 2 and 6 in nfes:
            panels[kind] = {"true": truth[name]}
            for s in ("euler", "dpmpp_2m", "lml_euler"):
                panels[kind][f"{s}, 6 NFE"] = run_sampler(problem.model, problem.x_start, kind,
                                                        s, 6, flow=kind == "flow")[0]
    if panels:
        report.scatter_2d(panels, scatter_path, "mix2d: true samples vs samplers at 6 NFE "
                          "(same noise; Karras top, flow shift 3 bottom)")
    return rows, floors


def digits_suite(samples, ref_steps, nfes, log, retrain=False):
    from .digits import DigitsModel, FeatureDistance, load_or_train

    t0 = time.time()
    net, train_seconds = load_or_train(log, retrain)
    fd = FeatureDistance()
    log(f"  digits: model ready ({'trained' if train_seconds else 'loaded'}), classifier accuracy "
        f"{fd.accuracy:.3f}, feature distance real-half vs real-half {fd.split_floor:.3f} "
        f"({time.time() - t0:.0f}s)")
    rows = []
    for kind in SCHEDULES:
        noise = torch.randn(samples, 64, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(77))
        problem = Problem("digits", kind, DigitsModel(net, kind == "flow"), noise, ref_steps,
                          log=log)
        ref_fd = fd(problem.reference)
        rows += evaluate(problem, sampler_specs(), nfes, lambda x: {"fd": fd(x)}, log=log)
        for r in rows[-len(sampler_specs()) * len(nfes):]:
            r["ref_check"], r["fd_reference"] = problem.ref_check, ref_fd
    return rows, {"train_seconds": train_seconds, "classifier_accuracy": fd.accuracy,
                  "fd_real_split": fd.split_floor}


def main(argv=None):
    parser = argparse.ArgumentParser(description="LML quality benchmark")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (tests)")
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--ref-steps", type=int, default=100, help="RK4 steps of the reference")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument("--no-cost", action="store_true")
    parser.add_argument("--retrain-digits", action="store_true")
    parser.add_argument("--data", nargs="*", default=None, help="exact data sets to run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_lines = []

    def log(msg):
        print(msg, flush=True)
        log_lines.append(msg)

    t_start, cpu_start = time.time(), time.process_time()
    if args.quick:
        names, samples, ref_steps, nfes = ["mix2d"], 256, 40, [5, 10]
    else:
        names, samples, ref_steps, nfes = list(EXACT_DATASETS), args.samples, args.ref_steps, NFES
    names = args.data or names
    log(f"LML benchmark: data {names}, {samples} samples, NFE {nfes}, reference {ref_steps} RK4 "
        f"steps, {args.threads} threads, defaults {DEFAULTS}")
    rows, floors = exact_suite(names, samples, ref_steps, nfes, log,
                               None if args.quick else out / "scatter_2d_6nfe.png")
    digits_info = None
    if not (args.quick or args.no_digits):
        digit_rows, digits_info = digits_suite(min(samples, 2000), ref_steps, nfes, log,
                                               args.retrain_digits)
        rows += digit_rows
    cost = None
    if not (args.quick or args.no_cost):
        from .cost import measure

        cost = measure(log=log)
    wall, cpu = time.time() - t_start, time.process_time() - cpu_start
    meta = {"defaults": DEFAULTS, "samples": samples, "nfes": nfes, "ref_rk4_steps": ref_steps,
            "karras": KARRAS, "flow_shift": FLOW_SHIFT, "floors": floors, "digits": digits_info,
            "cost": cost, "wall_seconds": wall, "cpu_seconds": cpu, "threads": args.threads,
            "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_markdown(out, rows, meta)
    if not args.quick:
        report.plot_metric(rows, out / "error_vs_nfe.png")
        report.plot_metric([r for r in rows if "sw2" in r], out / "sw2_vs_nfe.png", "sw2",
                           "sliced W2 vs true samples")
    log(f"done in {wall:.0f}s wall ({cpu:.0f}s CPU); wrote {out}")
    return rows, meta


def write_markdown(out, rows, meta):
    lines = ["# LML quality benchmark: results", "",
             f"Generated by `python -m bench` ({meta['samples']} samples, reference: "
             f"{meta['ref_rk4_steps']} RK4 steps = {4 * meta['ref_rk4_steps'] + 1} NFE, "
             f"{meta['threads']} threads; {meta['wall_seconds']:.0f} s wall, "
             f"{meta['cpu_seconds']:.0f} s CPU). LML settings = node defaults: "
             f"`{meta['defaults']}`.", "",
             "Solver error = RMS (per coordinate) distance to the reference solution of the same "
             "ODE from the same noise. Bold: an LML sampler below the best deterministic baseline "
             "at that NFE. A number in parentheses is the actual NFE where it differs from the "
             "budget (Heun: 2 per step, the last step Euler).", "",
             "## Solver error", "", report.error_tables(rows), "",
             "## Ratios (LML / other)", "", report.ratio_table(rows), ""]
    if any("sw2" in r for r in rows):
        lines += ["## Sliced W2 against fresh true samples", "",
                  "Floors (true vs true, same sample size): " + ", ".join(
                      f"{k} {v['sw2_true_vs_true']:.4f}" for k, v in meta["floors"].items()), "",
                  report.error_tables([r for r in rows if "sw2" in r], "sw2"), "",
                  "## Mode-weight error (total variation of component frequencies)", "",
                  "Floors (true samples): " + ", ".join(
                      f"{k} {v['mode_tv_true']:.4f}" for k, v in meta["floors"].items()), "",
                  report.error_tables([r for r in rows if "mode_tv" in r], "mode_tv"), ""]
    if any("fd" in r for r in rows):
        d = meta["digits"]
        lines += ["## Digits: feature distance (FID-style)", "",
                  f"Classifier accuracy {d['classifier_accuracy']:.3f}; real half vs real half "
                  f"{d['fd_real_split']:.3f}; the reference solution's own distance: " + ", ".join(
                      f"{r['schedule']} {r['fd_reference']:.3f}" for r in rows
                      if r["data"] == "digits" and r["sampler"] == "euler"
                      and r["nfe_budget"] == 5),
                  "", report.error_tables([r for r in rows if "fd" in r], "fd", "{:.3f}"), ""]
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
