"""Calibrate option sets side by side: evaluations and test ratio to the best pair.

``python -m bench.options --sets '{"old": {...}, "new": {}}'`` calibrates each point of a subset
of the calibrated benchmark (bench.calibrated: same problems, noise, calibration seeds and field)
with every option set in turn, scores each calibration on the benchmark's noise (which chose
nothing) against the best pair's RMS recorded in docs/bench/calibrated.json (the same problems
and noise), and writes docs/bench/options.md / .json (``--name``: another file name): per set,
the geometric means over the points of the median ratio, of the worst ratio and of the median
evaluations.  What chose the calibration defaults' cost settings (patience, tolerance,
sigma_fits); docs/bench/options_thorough.md: what more effort buys on the digits network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from . import calibrated as cal
from .suite import geometric_mean


def run_point(problem, nfe, options, seeds, best_rms) -> dict:
    """One point with one option set (bench.calibrated's calibrations and scoring): per seed
    the test ratio and the evaluations."""
    row, = cal.calibrated_rows(problem, [nfe], cal.CALIBRATION_SAMPLES, options,
                               lambda *_: None, seeds)
    ratios = [s["rms"] / best_rms for s in row["seeds"]]
    evaluations = [s["cost"]["evaluations"] for s in row["seeds"]]
    return {"ratio": statistics.median(ratios), "ratio_max": max(ratios),
            "evaluations": statistics.median(evaluations), "ratios": ratios,
            "all_evaluations": evaluations}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", required=True, help='{"name": {calibrate options}, ...}')
    parser.add_argument("--data", nargs="*", default=["mix2d", "mix64d"])
    parser.add_argument("--cfg", nargs="*", type=float, default=[3.0, 6.0])
    parser.add_argument("--nfes", nargs="*", type=int, default=[8, 10])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--name", default="options", help="writes OUT/NAME.md and NAME.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sets = json.loads(args.sets)
    out = Path(args.out)
    best = {(p["data"], p["schedule"], p["nfe"]): p["best_rms"]
            for p in json.loads((out / "calibrated.json").read_text())["points"]}
    started = time.time()
    rows = []
    for problem in cal.benchmark_problems(args.data, args.cfg, lambda n: cal.SAMPLES[n], 100,
                                          lambda *_: None):
        for nfe in args.nfes:
            for name, options in sets.items():
                r = run_point(problem, nfe, options, args.seeds,
                              best[(problem.name, problem.kind, nfe)])
                rows.append({"set": name, "data": problem.name, "schedule": problem.kind,
                             "nfe": nfe, **r})
                print(f"{problem.name}/{problem.kind}/{nfe} {name}: ratio {r['ratio']:.3f} "
                      f"(worst {r['ratio_max']:.3f}), {r['evaluations']:.0f} evaluations",
                      flush=True)
    summary = {name: {k: geometric_mean(r[k] for r in rows if r["set"] == name)
                      for k in ("ratio", "ratio_max", "evaluations")} for name in sets}
    meta = {"sets": sets, "seeds": args.seeds, "nfes": args.nfes,
            "wall_seconds": round(time.time() - started)}
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "summary": summary,
                                                  "rows": rows}, indent=1) + "\n")
    points = len({(r["data"], r["schedule"], r["nfe"]) for r in rows})
    lines = ["# Calibrate option sets side by side", "",
             f"`python -m bench.options`: {points} "
             f"points of the calibrated benchmark (NFE {args.nfes}), {args.seeds} calibration "
             "seeds each, every set on the same noise; ratio = calibrated RMS on the "
             "benchmark's noise (which chose nothing) / the best pair's (docs/bench/calibrated"
             f".json). Run took {meta['wall_seconds']} s.", "",
             "| set | options | geometric mean of the median ratios | of the worst ratios | "
             "of the median evaluations |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | `{json.dumps(sets[name])}` | {s['ratio']:.3f} | "
                     f"{s['ratio_max']:.3f} | {s['evaluations']:.0f} |")
    lines += ["", "| point | " + " | ".join(f"{n}: ratio (worst), evaluations" for n in sets)
              + " |", "|---|" + "---|" * len(sets)]
    for key in dict.fromkeys((r["data"], r["schedule"], r["nfe"]) for r in rows):
        cells = [next(r for r in rows if r["set"] == n and (r["data"], r["schedule"],
                                                            r["nfe"]) == key) for n in sets]
        lines.append(f"| {key[0]}/{key[1]}/{key[2]} | " + " | ".join(
            f"{c['ratio']:.3f} ({c['ratio_max']:.3f}), {c['evaluations']:.0f}" for c in cells)
            + " |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
