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
    the test ratio and the evaluations.  A set's ``samples`` (not a calibrate option) is the
    calibration's noise count, as LML Calibrate's widget of that name (default
    CALIBRATION_SAMPLES)."""
    options = dict(options)
    samples = options.pop("samples", cal.CALIBRATION_SAMPLES)
    row, = cal.calibrated_rows(problem, [nfe], samples, options, lambda *_: None, seeds)
    ratios = [s["rms"] / best_rms for s in row["seeds"]]
    evaluations = [s["cost"]["evaluations"] for s in row["seeds"]]
    return {"ratio": statistics.median(ratios), "ratio_max": max(ratios),
            "evaluations": statistics.median(evaluations), "ratios": ratios,
            "all_evaluations": evaluations}


def summaries(sets, rows) -> dict:
    """Per set: the geometric means over its points of the median ratio, the worst ratio and
    the median evaluations, and of the median ratio per data set ("by_data")."""
    out = {}
    for name in sets:
        mine = [r for r in rows if r["set"] == name]
        out[name] = {k: geometric_mean(r[k] for r in mine)
                     for k in ("ratio", "ratio_max", "evaluations")}
        out[name]["by_data"] = {data: geometric_mean(r["ratio"] for r in mine
                                                     if r["data"] == data)
                                for data in dict.fromkeys(r["data"] for r in mine)}
    return out


def summary_lines(sets, rows) -> list[str]:
    """The sets' summary table (also README's, bench.readme)."""
    summary = summaries(sets, rows)
    lines = ["| set | options | geometric mean of the median ratios | of the worst ratios | "
             "of the median evaluations | median ratios by data set |",
             "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        by_data = ", ".join(f"{data} {v:.3f}" for data, v in s["by_data"].items())
        lines.append(f"| {name} | `{json.dumps(sets[name])}` | {s['ratio']:.3f} | "
                     f"{s['ratio_max']:.3f} | {s['evaluations']:.0f} | {by_data} |")
    return lines


def write_markdown(path: Path, data):
    """``path`` (.md) from a run's JSON ``data``: the summary, then every point."""
    meta, rows = data["meta"], data["rows"]
    sets = meta["sets"]
    points = len({(r["data"], r["schedule"], r["nfe"]) for r in rows})
    lines = ["# Calibrate option sets side by side", "",
             f"`python -m bench.options`: {points} "
             f"points of the calibrated benchmark (NFE {meta['nfes']}), {meta['seeds']} "
             "calibration seeds each, every set on the same noise; ratio = calibrated RMS on the "
             "benchmark's noise (which chose nothing) / the best pair's (docs/bench/calibrated"
             f".json). Run took {meta['wall_seconds']} s.", "",
             *summary_lines(sets, rows)]
    lines += ["", "| point | " + " | ".join(f"{n}: ratio (worst), evaluations" for n in sets)
              + " |", "|---|" + "---|" * len(sets)]
    for key in dict.fromkeys((r["data"], r["schedule"], r["nfe"]) for r in rows):
        cells = [next(r for r in rows if r["set"] == n and (r["data"], r["schedule"],
                                                            r["nfe"]) == key) for n in sets]
        lines.append(f"| {key[0]}/{key[1]}/{key[2]} | " + " | ".join(
            f"{c['ratio']:.3f} ({c['ratio_max']:.3f}), {c['evaluations']:.0f}" for c in cells)
            + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", help='{"name": {calibrate options}, ...}')
    parser.add_argument("--data", nargs="*", default=["mix2d", "mix64d"])
    parser.add_argument("--cfg", nargs="*", type=float, default=[3.0, 6.0])
    parser.add_argument("--nfes", nargs="*", type=int, default=[8, 10])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--name", default="options", help="writes OUT/NAME.md and NAME.json")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite OUT/NAME.md from OUT/NAME.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.markdown_only:
        return write_markdown(out / f"{args.name}.md",
                              json.loads((out / f"{args.name}.json").read_text()))
    if not args.sets:
        parser.error("--sets is required (or --markdown-only)")
    torch.set_num_threads(1)
    sets = json.loads(args.sets)
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
    meta = {"sets": sets, "seeds": args.seeds, "nfes": args.nfes,
            "wall_seconds": round(time.time() - started)}
    data = {"meta": meta, "summary": summaries(sets, rows), "rows": rows}
    (out / f"{args.name}.json").write_text(json.dumps(data, indent=1) + "\n")
    write_markdown(out / f"{args.name}.md", data)


if __name__ == "__main__":
    main()
