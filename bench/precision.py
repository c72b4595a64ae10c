"""The calibration's finite-difference step against the model's precision (python -m
bench.precision, bash scripts/bench.sh precision -> docs/bench/precision.md).

A ComfyUI UNet on a GPU computes in float16 or bfloat16 and hands the sampler float32 latents.
Each Jacobian column of the fit differences two rollouts that carry the model's rounding, so a
step that suits float32 (1e-2) is lost in half-precision noise.  On the digits network (cfg 3,
Karras) the model runs under torch.autocast in each precision (on the CPU: the same arithmetic
types as a GPU's autocast; bench.gpu ran both for the 1e-2 step and they agreed to 10%), is
calibrated with each step on its own noise (seeds 0..), and the calibrated sampler is scored on
500 other noises against the float64 reference of the float32 model, as a ratio to the best
(sampler, scheduler) pair there.  The "floor" is the half-precision model's own reference
against the float32 one: what no sampler of that model can beat.  The chosen steps are
lml_core.objective.FD_STEPS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from lml_core import calibrate, sample_lml_calibrated
from lml_core.objective import FD_STEPS

from .calibrated import calibration_field, calibration_noise
from .common import digits_noise, initial_noise, reference_solution, rms
from .digits import RowLabelledDigitsModel, with_labels
from .field import HostModel
from .gpu import PRECISIONS, Autocast, digits_model, pair_rms
from .suite import sigmas_for

STEPS = (1e-2, 3e-2, 0.1, 0.2, 0.3)
NFES = (5, 8)


def run(nfes, steps, seeds, samples, log=print) -> dict:
    torch.set_num_threads(1)
    cpu, kind = torch.device("cpu"), "karras"
    problem = SimpleNamespace(kind=kind, flow=False, x_start=torch.zeros(1, 64))
    model = digits_model(3.0, False, cpu)
    test = initial_noise(kind, digits_noise(samples))
    test = test.to(torch.float32)
    reference = reference_solution(model, test, kind, 250)
    floors = {p: rms(reference_solution(Autocast(model, d, cpu), test, kind, 250), reference)
              for p, d in PRECISIONS.items()}
    rows = []
    for nfe in nfes:
        schedules, samplers, own = calibration_field(problem, nfe)
        sigmas = sigmas_for("euler", kind, nfe).to(torch.float32)
        pairs = pair_rms(model, test, reference, nfe, False, schedules, samplers, own)
        scored = {k: v for k, v in pairs.items() if isinstance(v, float)}
        best = min(scored, key=scored.get)
        for precision, dtype in PRECISIONS.items():
            for step in steps:
                for seed in range(seeds):
                    noise = with_labels(calibration_noise(problem, 32, seed))
                    host = HostModel(Autocast(RowLabelledDigitsModel(model), dtype, cpu), False)
                    start = time.perf_counter()
                    calibration = calibrate(host, noise, sigmas, schedules=schedules,
                                            samplers=samplers, sampler_schedules=own,
                                            fd_step=step)
                    seconds = time.perf_counter() - start
                    x = sample_lml_calibrated(HostModel(Autocast(model, dtype, cpu), False),
                                              test, sigmas, calibration=calibration,
                                              samplers=samplers, disable=True)
                    row = {"nfe": nfe, "precision": precision, "fd_step": step, "seed": seed,
                           "rms": rms(x, reference), "best_pair": best,
                           "best_pair_rms": scored[best], "chosen": calibration.report["chosen"],
                           "iterations": calibration.report["iterations"],
                           "seconds": round(seconds, 1)}
                    row["ratio"] = row["rms"] / row["best_pair_rms"]
                    rows.append(row)
                    log(f"  NFE {nfe} {precision} fd_step {step:g} seed {seed}: ratio "
                        f"{row['ratio']:.3f} ({row['chosen']}, {row['iterations']} LM steps, "
                        f"{seconds:.1f}s)")
    return {"floors": floors, "rows": rows}


def table_lines(results) -> list[str]:
    """The ratio table, NFE x precision x fd_step (also README's, bench.readme)."""
    rows = results["rows"]
    steps = sorted({r["fd_step"] for r in rows})
    lines = ["Median (worst) ratio of the calibrated sampler's RMS to the best pair's; "
             "**bold**: the step FD_STEPS picks for that precision.", "",
             "| NFE | precision | best pair (RMS) | "
             + " | ".join(f"fd_step {s:g}" for s in steps) + " |",
             "|---|---|---|" + "---|" * len(steps)]
    for nfe in sorted({r["nfe"] for r in rows}):
        best = next(r for r in rows if r["nfe"] == nfe)
        for precision in PRECISIONS:
            cells = []
            for step in steps:
                ratios = [r["ratio"] for r in rows if (r["nfe"], r["precision"], r["fd_step"])
                          == (nfe, precision, step)]
                text = f"{statistics.median(ratios):.3f} ({max(ratios):.3f})"
                chosen = FD_STEPS[getattr(torch, precision)] == step
                cells.append(f"**{text}**" if chosen else text)
            lines.append(f"| {nfe} | {precision} | {best['best_pair']} "
                         f"({best['best_pair_rms']:.4f}) | " + " | ".join(cells) + " |")
    return lines


def markdown(results, meta) -> str:
    floors = results["floors"]
    lines = ["# The finite-difference step against the model's precision", "",
             __doc__.split("\n\n", 1)[1].strip().replace("\n", " "), "",
             f"{meta['seeds']} calibration seeds per cell, {meta['samples']} test noises; run "
             f"took {meta['seconds']:.0f} s on {meta['machine']}.", "",
             "Floor (half-precision model's reference vs the float32 one, RMS): "
             + ", ".join(f"{p} {v:.5f}" for p, v in floors.items()) + ".", "",
             *table_lines(results)]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--nfes", default=",".join(map(str, NFES)))
    parser.add_argument("--steps", default=",".join(map(str, STEPS)))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = run([int(n) for n in args.nfes.split(",")],
                  [float(s) for s in args.steps.split(",")], args.seeds, args.samples)
    meta = {"seeds": args.seeds, "samples": args.samples,
            "seconds": time.perf_counter() - start,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 1 thread"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps({"meta": meta, **results}, indent=1))
    (args.out / "precision.md").write_text(markdown(results, meta))


if __name__ == "__main__":
    main()
