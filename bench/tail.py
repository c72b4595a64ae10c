"""Where a calibrated sampler's RMS comes from at one benchmark point: python -m bench.tail
--data mix2d --schedule karras --nfe 10 -> docs/bench/tail_mix2d_karras_10.md.

bench.calibrated's calibrations of the point (same calibration noises and seeds, same field,
``--schedulers``: only those host schedulers in it), each scored on the benchmark's noise
against the point's best pair (named by calibrated.json in ``--out``, docs/bench by default;
rerun here): per seed the RMS, the
median per-sample error, the samples that end far from the reference ("far": a per-sample
error above FAR times the reference's spread, on the exact mixtures a sample in another
component) and their share of the squared error, how many of them the best pair has too, what
the calibration chose and the timesteps it runs.  On the mixtures a few far samples carry the
RMS; which ones, and how many, follows the timesteps more than the fit.  The page's second
table shows how far that goes: the best sampler on each host scheduler, and its far samples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from . import calibrated as cal
from . import field
from .common import bootstrap_ratio, squared_errors
from .pairs import runnable
from .run import SAMPLES, log, prepare
from .suite import run_sampler

FAR = 0.25  # a sample is far when its error is above this times the reference's spread


def best_pair(bench: Path, problem, nfe) -> tuple[str, str]:
    """(sampler, scheduler) of the point's best pair in bench/calibrated.json."""
    points = json.loads((bench / "calibrated.json").read_text())["points"]
    point, = (p for p in points if (p["data"], p["schedule"], p["nfe"]) == (
        problem.name, problem.kind, nfe))
    return point["best_sampler"], point["best_scheduler"]


def described(errors, far_at) -> dict:
    """RMS, median, the far samples (their indices) and their share of the squared error."""
    far = errors > far_at
    squared = errors.pow(2)
    return {"rms": float(squared.mean().sqrt()), "median": float(errors.median()),
            "far": int(far.sum()), "far_share": float(squared[far].sum() / squared.sum()),
            "far_rows": far.nonzero().flatten().tolist()}


def by_scheduler(errors: dict, far_at: float) -> list[dict]:
    """Per scheduler in ``errors`` ({(sampler, scheduler): per-sample errors}): its best
    sampler by RMS, described(), and the fewest far samples of any sampler on it; best
    first."""
    rows = []
    for scheduler in dict.fromkeys(s for _, s in errors):
        mine = {sampler: e for (sampler, s), e in errors.items() if s == scheduler}
        best = min(mine, key=lambda sampler: float(mine[sampler].pow(2).mean()))
        record = described(mine[best], far_at)
        del record["far_rows"]
        rows.append({"scheduler": scheduler, "sampler": best, **record,
                     "fewest_far": min(int((e > far_at).sum()) for e in mine.values())})
    return sorted(rows, key=lambda r: r["rms"])


def field_errors(problem, nfe) -> dict:
    """{(sampler, scheduler): per-sample errors} of every deterministic pair that runs at
    ``nfe`` model calls on the problem's noise (bench.pairs.select's field)."""
    out = {}
    for sampler in field.DETERMINISTIC:
        for scheduler in runnable(problem.flow, [nfe]):
            try:
                x, calls = run_sampler(problem.model, problem.x_start, problem.kind, sampler,
                                       nfe, scheduler=scheduler)
            except Exception:  # a pair the host cannot run here: not in the field
                continue
            errors = squared_errors(x, problem.reference).sqrt()
            if calls <= nfe and bool(errors.isfinite().all()):
                out[(sampler, scheduler)] = errors
    return out


def tail(problem, nfe, seeds, pair, schedulers=None) -> dict:
    """The point's record: the best pair's per-sample picture and each calibration seed's
    (bench.calibrated's calibrated_rows: the same calibrations and scoring)."""
    far_at = FAR * float(problem.reference.std())
    pair_squared = cal.pair_squared_errors(problem, *pair, nfe)
    best = {"pair": " + ".join(pair), **described(pair_squared.sqrt(), far_at)}
    errors = {}
    row, = cal.calibrated_rows(problem, [nfe], cal.CALIBRATION_SAMPLES, {}, log, seeds, errors,
                               schedulers)
    records = []
    for s, squared in zip(row["seeds"], errors[(problem.name, problem.kind, nfe)]):
        record = described(squared.sqrt(), far_at)
        record.update(seed=s["seed"], interval=bootstrap_ratio([squared], pair_squared),
                      chosen=s["chosen"], sigmas=[round(v, 4) for v in s["sigmas"]],
                      far_with_pair=len(set(record["far_rows"]) & set(best["far_rows"])),
                      ratio=record["rms"] / best["rms"])
        records.append(record)
        log(f"  seed {s['seed']}: ratio {record['ratio']:.3f}, {record['far']} far "
            f"({record['far_share']:.0%} of the squared error), {record['chosen']}")
    return {"data": problem.name, "schedule": problem.kind, "nfe": nfe,
            "samples": len(problem.x_start), "far_at": far_at, "schedulers": schedulers,
            "best_pair": best, "seeds": records,
            "by_scheduler": by_scheduler(field_errors(problem, nfe), far_at),
            "median_ratio": statistics.median(r["ratio"] for r in records)}


def markdown(record, command, seconds) -> str:
    best = record["best_pair"]
    fields = (f"{record['data']}/{record['schedule']}, {record['nfe']} NFE, "
              f"{record['samples']} samples")
    only = (f" LML Calibrate's field restricted to the scheduler(s) "
            f"{', '.join(record['schedulers'])}." if record["schedulers"] else "")
    lines = [f"# Where the calibrated sampler's RMS comes from: {fields}", "",
             f"`{command}` ({seconds:.0f} s). Far: a per-sample error above {FAR} x the "
             f"reference's spread ({record['far_at']:.3g}).{only} Median ratio to the best pair "
             f"over the seeds: **{record['median_ratio']:.3f}**.", "",
             "| | RMS | ratio to the best pair (90% bootstrap interval over the test samples) | "
             "median error | far samples | their share of "
             "the squared error | far for the best pair too | runs | its timesteps |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| best pair {best['pair']} | {best['rms']:.4f} | 1 | {best['median']:.4f} | "
             f"{best['far']} | {best['far_share']:.0%} | | | |"]
    for r in record["seeds"]:
        low, high = r["interval"]
        lines.append(f"| calibration seed {r['seed']} | {r['rms']:.4f} | {r['ratio']:.3f} "
                     f"({low:.2f}-{high:.2f}) | "
                     f"{r['median']:.4f} | {r['far']} | {r['far_share']:.0%} | "
                     f"{r['far_with_pair']} | {r['chosen']} | "
                     f"{', '.join(f'{s:.4g}' for s in r['sigmas'])} |")
    lines += ["", "Each host scheduler with its best sampler here (by RMS on all the samples; "
              "uncalibrated): the far samples follow the schedule, whichever sampler runs it.",
              "", "| scheduler | its best sampler | RMS | median error | far samples | their "
              "share of the squared error | fewest far samples of any sampler on it |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['scheduler']} | {r['sampler']} | {r['rms']:.4f} | {r['median']:.4f} | "
              f"{r['far']} | {r['far_share']:.0%} | {r['fewest_far']} |"
              for r in record.get("by_scheduler", [])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mix2d")
    parser.add_argument("--cfg", type=float, default=None, help="the digits network at this cfg")
    parser.add_argument("--schedule", default="karras", choices=["karras", "flow"])
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=cal.SEEDS)
    parser.add_argument("--schedulers", nargs="*", default=None,
                        help="only these host schedulers in the calibration's field")
    parser.add_argument("--ref-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    out = prepare(args)
    started = time.time()
    names, cfgs = ([], [args.cfg]) if args.cfg is not None else ([args.data], [])
    problem, = (p for p in cal.benchmark_problems(names, cfgs, lambda n: SAMPLES[n],
                                                    args.ref_steps, log)
                if p.kind == args.schedule)
    record = tail(problem, args.nfe, args.seeds, best_pair(out, problem, args.nfe),
                  args.schedulers)
    name = args.name or "tail_" + "_".join(
        [problem.name.replace(" ", ""), problem.kind, str(args.nfe)]
        + (args.schedulers or []))
    command = "python -m bench.tail " + " ".join(argv if argv is not None else __import__(
        "sys").argv[1:])
    seconds = time.time() - started
    (out / f"{name}.json").write_text(json.dumps({"command": command, "seconds": seconds,
                                                  **record}, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(record, command, seconds))
    log(f"wrote {out / name}.md")
    return record


if __name__ == "__main__":
    main()
