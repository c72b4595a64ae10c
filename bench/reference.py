"""How close the calibration's reference is to the converged solution, per model call
(python -m bench.reference, bash scripts/bench.sh reference -> docs/bench/reference.md).

Every calibration first solves the probability-flow ODE from all its noises: the reference it
fits to.  For each benchmark problem (the calibration noise of seed 0, 32 noises, as
bench.calibrated calibrates it; float64), this compares with a 256-step classic RK4 solution
(uniform in log-SNR, the grid lml_core.reference.reference_grid makes):
- classic RK4 in sigma at 32 steps (4 model calls a step; the calibration's reference before
  the multistep one), and
- lml_core.reference.Reference, the fourth-order exponential predictor-corrector in data
  prediction (one call a step), at 64, 80 and 96 steps,
by the RMS of the final sample's error over the noises, the median noise's error (a noise near
a mode boundary can carry the RMS), and both against the best pair's RMS at 10 NFE on the
benchmark (docs/bench/calibrated.json): a reference must be far closer to the solution than
the samplers it calibrates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from lml_core.reference import Evaluator, Reference, reference_grid
from lml_core.sampling import to_d

from . import calibrated as cal
from . import field
from .common import rk4, squared_errors
from .digits import CFGDigitsModel, load_or_train
from .exact import EXACT_DATASETS, MixtureModel
from .suite import SCHEDULES

TRUTH_STEPS = 256
RK4_STEPS = 32
MULTISTEP_STEPS = (64, 80, 96)


def rk4_final(denoise, x, grid):
    """The final sample of classic RK4 of dx/dsigma = (x - D) / sigma over ``grid``, then the
    denoising step (the calibration's reference before the multistep one)."""
    return denoise(rk4(lambda x, s: to_d(x, s, denoise(x, s)), x, grid), grid[-1])


def problems(log):
    """(data, schedule, model, flow) of every benchmark problem."""
    net, _ = load_or_train(log)
    for name in ("mix2d", "mix64d", "sub3072d"):
        mixture = EXACT_DATASETS[name]()
        for kind in SCHEDULES:
            yield name, kind, MixtureModel(mixture, kind == "flow"), mixture.dim
    for cfg in cal.CFG_SCALES:
        for kind in SCHEDULES:
            yield f"digits cfg {cfg:g}", kind, CFGDigitsModel(net, kind == "flow", cfg), 64


def errors(final, truth) -> dict:
    per_noise = squared_errors(final, truth).sqrt()
    return {"rms": float(per_noise.pow(2).mean().sqrt()),
            "median": float(per_noise.median())}


def measure(data, kind, model, dim, best_rms) -> dict:
    flow = kind == "flow"
    # what calibration_noise and for_calibration read of a benchmark Problem
    problem = SimpleNamespace(kind=kind, x_start=torch.zeros(1, dim), model=model)
    noise = cal.calibration_noise(problem, cal.CALIBRATION_SAMPLES, 0).to(torch.float64)
    model, x = cal.for_calibration(problem, noise)
    host = field.HostModel(model, flow=flow)
    denoise = Evaluator(host, {}, torch.float64)
    start = float(cal.sigmas_for("euler", kind, 4)[0])
    floor = float(host.model_sampling.sigma_min) if flow else 0.002
    truth = rk4_final(denoise, x, reference_grid(start, floor, TRUTH_STEPS, flow))
    rows = x.shape[0]
    out = {"data": data, "schedule": kind, "best_rms_10": best_rms, "methods": []}

    def record(method, steps, final, calls):
        e = errors(final, truth)
        out["methods"].append({"method": method, "steps": steps, "calls_per_noise": calls, **e,
                               "rms_of_best": e["rms"] / best_rms,
                               "median_of_best": e["median"] / best_rms})

    before = denoise.rows
    final = rk4_final(denoise, x, reference_grid(start, floor, RK4_STEPS, flow))
    record("rk4", RK4_STEPS, final, (denoise.rows - before) / rows)
    for steps in MULTISTEP_STEPS:
        before = denoise.rows
        reference = Reference(denoise, x, reference_grid(start, floor, steps, flow), flow)
        record("multistep", steps, reference.final, (denoise.rows - before) / rows)
    return out


def markdown(data) -> str:
    lines = ["# The calibration's reference: error per model call", "",
             f"`bash scripts/bench.sh reference` (python -m bench.reference). "
             f"{data['meta']['noises']} calibration noises (seed 0) per problem, float64; each "
             f"method's final sample against a {TRUTH_STEPS}-step classic RK4 solution from the "
             f"same noise: RMS over the noises and the median noise's error, and both over the "
             f"best pair's RMS at 10 NFE on the benchmark (docs/bench/calibrated.json). Run "
             f"took {data['meta']['seconds']:.0f} s on 1 thread.", "",
             "**Summary** (geometric mean over the problems of the error over the best pair's "
             "at 10 NFE, RMS / median noise; calls per noise):", ""]
    for method, steps in [("rk4", RK4_STEPS)] + [("multistep", s) for s in MULTISTEP_STEPS]:
        picked = [m for p in data["points"] for m in p["methods"]
                  if (m["method"], m["steps"]) == (method, steps)]
        rms, median = (statistics.geometric_mean([m[key] for m in picked])
                       for key in ("rms_of_best", "median_of_best"))
        lines.append(f"- {method} {steps} steps ({picked[0]['calls_per_noise']:.0f} calls a "
                     f"noise on Karras): {100 * rms:.3f}% / {100 * median:.3f}% of the best "
                     f"pair's error; worst "
                     f"problem {100 * max(m['rms_of_best'] for m in picked):.2f}% (RMS)")
    lines += ["", "| data | schedule | best pair's RMS at 10 NFE | method | steps | calls a noise "
              "| RMS error | median noise's error | RMS / best | median / best |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in data["points"]:
        for m in p["methods"]:
            lines.append(f"| {p['data']} | {p['schedule']} | {p['best_rms_10']:.4f} | "
                         f"{m['method']} | {m['steps']} | {m['calls_per_noise']:.0f} | "
                         f"{m['rms']:.2e} | {m['median']:.2e} | {100 * m['rms_of_best']:.3f}% | "
                         f"{100 * m['median_of_best']:.3f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/bench")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    best = {(p["data"], p["schedule"]): p["best_rms"] for p in json.loads(
        (out / "calibrated.json").read_text())["points"] if p["nfe"] == 10}
    started = time.time()
    points = []
    for data, kind, model, dim in problems(lambda *_: None):
        points.append(measure(data, kind, model, dim, best[(data, kind)]))
        print(data, kind, " | ".join(f"{m['method']} {m['steps']}: {m['rms']:.2e}"
                                     for m in points[-1]["methods"]), flush=True)
    result = {"meta": {"noises": cal.CALIBRATION_SAMPLES, "truth_steps": TRUTH_STEPS,
                       "seconds": round(time.time() - started)}, "points": points}
    (out / "reference.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "reference.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
