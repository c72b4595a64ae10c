"""The calibrated benchmark's page (docs/bench/calibrated.md) and README's blocks from it: the
summary per family (the median and worst ratio to the best pair over the calibration seeds, the
points above MEDIAN_ABOVE / WORST_ABOVE), what of each verdict the test noise decides, the cost
against the calibration when issue 25 was filed, the report's test ratio as a guide, the typical
error against the tail and two draws of the test noise side by side.  It reads bench.calibrated's
rows and points (``comparison``); running the benchmark is bench.calibrated's."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from . import report
from .suite import geometric_mean

LABEL = "lml_calibrated"  # the calibrated sampler's rows
# A point's worst seed above WORST_ABOVE, or its median seed above MEDIAN_ABOVE, the best pair's
# RMS is counted in the summary.
WORST_ABOVE, MEDIAN_ABOVE = 1.1, 1.02


def interval_lines(points) -> list[str]:
    """What of the points' verdicts the test noise decides (their ratio_interval)."""
    points = [p for p in points if "ratio_interval" in p]
    if not points:
        return []
    above = [p for p in points if p["ratio"] > MEDIAN_ABOVE]
    sure = [p for p in above if p["ratio_interval"][0] > MEDIAN_ABOVE]
    below = [p for p in points if p["ratio_interval"][1] <= MEDIAN_ABOVE]

    def names(selected):
        return ", ".join(f"{p['data']}/{p['schedule']} {p['nfe']} NFE {p['ratio']:.2f} "
                         f"({p['ratio_interval'][0]:.2f}-{p['ratio_interval'][1]:.2f})"
                         for p in selected) or "none"
    return ["", "**How much the test noise decides** (a 90% bootstrap interval of each point's "
            "median ratio, resampling the benchmark's test samples; the same rows for the "
            f"calibrated samplers and the best pair): {len(below)} of {len(points)} points "
            f"are below {MEDIAN_ABOVE} over the whole interval; of the {len(above)} with the "
            f"median above {MEDIAN_ABOVE}, {len(sure)} are above it over the whole interval "
            f"({names(sure)}), the others' intervals reach below it "
            f"({names([p for p in above if p not in sure])})."]


def families(points) -> dict:
    """{label: points} per family: the exact mixtures, then each digits cfg."""
    out = {}
    exact = [p for p in points if not p["data"].startswith("digits")]
    if exact:
        out["exact mixtures (Karras + flow)"] = exact
    for data in dict.fromkeys(p["data"] for p in points if p["data"].startswith("digits")):
        out[f"{data} (Karras + flow)"] = [p for p in points if p["data"] == data]
    return out


def summary_numbers(points) -> dict:
    """A family's summary: geometric means of the median and of the worst ratios over the
    seeds, the worst point, the counts of points whose median ratio is above MEDIAN_ABOVE and
    whose worst is above WORST_ABOVE, and the geometric mean of the (median) ratio to the best
    sampler on the default schedule."""
    worst = max(points, key=lambda p: p.get("ratio_max", p["ratio"]))
    return {"points": len(points), "median": geometric_mean(p["ratio"] for p in points),
            "worst": geometric_mean(p.get("ratio_max", p["ratio"]) for p in points),
            "worst_point": worst, "worst_ratio": worst.get("ratio_max", worst["ratio"]),
            "median_above": sum(p["ratio"] > MEDIAN_ABOVE for p in points),
            "worst_above": sum(p.get("ratio_max", p["ratio"]) > WORST_ABOVE for p in points),
            "default": geometric_mean(p["ratio_default"] for p in points)}


def summary(points, label):
    n = summary_numbers(points)
    w = n["worst_point"]
    return (f"| {label} | {n['points']} | {n['median']:.3f} | {n['worst']:.3f} | "
            f"{n['worst_ratio']:.3f} ({w['data']}/{w['schedule']}, {w['nfe']} NFE) | "
            f"{n['median_above']} | {n['worst_above']} | {n['default']:.3f} |")


BASELINE = Path(__file__).resolve().parent.parent / "docs" / "bench" / "cost_baseline.json"


def cost_against_baseline(points, baseline=BASELINE, nfes=(8, 10)) -> dict | None:
    """The evaluations at ``nfes`` against the calibration when issue 25 was filed
    (``baseline``: its per-point evaluations and RMS): per point and the geometric mean of
    (baseline / now), and the geometric means of both median ratios to the best pair."""
    if not baseline.exists():
        return None
    old = {(b["data"], b["schedule"], b["nfe"]): b for b in json.loads(
        baseline.read_text())["points"]}
    rows = [(p, old[(p["data"], p["schedule"], p["nfe"])]) for p in points
            if p["nfe"] in nfes and (p["data"], p["schedule"], p["nfe"]) in old]
    if not rows:
        return None
    fewer = [b["evaluations"] / p["cost"]["evaluations"] for p, b in rows]
    return {"points": len(rows), "nfes": list(nfes), "fewer": geometric_mean(fewer),
            "fewer_min": min(fewer), "fewer_max": max(fewer),
            "ratio": geometric_mean(p["ratio"] for p, _ in rows),
            "ratio_baseline": geometric_mean(b["rms"] / p["best_rms"] for p, b in rows)}


def per_step_count(points) -> str:
    """The evaluations per step count: the geometric mean over the points of the median
    evaluations, and their range; the seconds' range."""
    nfes = sorted({p["nfe"] for p in points})
    cells = []
    for nfe in nfes:
        values = [p["cost"]["evaluations"] for p in points if p["nfe"] == nfe]
        cells.append(f"{nfe} NFE {geometric_mean(values):.0f} ({min(values):.0f}-"
                     f"{max(values):.0f})")
    seconds = [p["cost"]["seconds"] for p in points]
    return ("**Evaluations per step count** (geometric mean over the points of the median over "
            "the seeds, and range): " + ", ".join(cells)
            + f"; {min(seconds):.1f}-{max(seconds):.1f} s a calibration (median over the seeds).")


def cost_lines(points) -> list[str]:
    c = cost_against_baseline(points)
    lines = ["", per_step_count(points)] if points and "cost" in points[0] else []
    if c is None:
        return lines
    return lines + ["", f"**Evaluations against the calibration when issue 25 was filed** "
            f"(docs/bench/cost_baseline.json: its per-point evaluations and RMS), NFE "
            f"{' and '.join(map(str, c['nfes']))}, {c['points']} points: **{c['fewer']:.2f}x "
            f"fewer** (geometric mean; {c['fewer_min']:.2f}-{c['fewer_max']:.2f}x per point); "
            f"the geometric mean of the median ratio to the best pair there is "
            f"{c['ratio']:.3f}, against {c['ratio_baseline']:.3f} for that calibration's "
            f"samples."]


def nearest_rank(ordered, q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report_guide(rows, points) -> dict:
    """How well the report's own test ratio (test_rms / test_rms_best_pair on the noise that
    chose nothing) predicts the benchmark's ratio, per family ("digits", "exact mixtures"):
    the median and the 10th-90th percentile and min-max of report / benchmark over all seeds."""
    best = {(p["data"], p["schedule"], p["nfe"]): p["best_rms"] for p in points}
    quotients = {}
    for row in (r for r in rows if r["sampler"] == LABEL):
        for s in row.get("seeds", []):
            if s.get("test_rms") and s.get("test_rms_best_pair"):
                benchmark = s["rms"] / best[(row["data"], row["schedule"], row["nfe_budget"])]
                family = "digits" if row["data"].startswith("digits") else "exact mixtures"
                quotients.setdefault(family, []).append(
                    s["test_rms"] / s["test_rms_best_pair"] / benchmark)
    out = {}
    for family, values in quotients.items():
        values = sorted(values)
        out[family] = {"calibrations": len(values), "median": statistics.median(values),
                       "p10": nearest_rank(values, 0.1), "p90": nearest_rank(values, 0.9),
                       "min": values[0], "max": values[-1]}
    return out


def guide_lines(rows, points) -> list[str]:
    guide = report_guide(rows, points)
    if not guide:
        return []
    return ["", "**The report's test ratio as a guide** (its test_rms / test_rms_best_pair on "
            "the 8 calibration noises that chose nothing, over the benchmark's ratio): " + "; "
            .join(f"{family}: median {g['median']:.2f}x, 80% within {g['p10']:.2f}-"
                  f"{g['p90']:.2f}x, all {g['min']:.2f}-{g['max']:.2f}x over "
                  f"{g['calibrations']} calibrations" for family, g in guide.items()) + "."]


def typical_errors(rows, points) -> dict:
    """Per family: the typical error against the tail.  "median": the geometric mean over the
    points of the calibrated median error (per sample, over the benchmark's noise; the median
    over the seeds) over the smallest median error of any pair; "tail" and "tail_best": the
    geometric means of RMS / median error of the calibrated sampler and of the best pair (by
    RMS).  A large RMS / median means a few samples (another mode than the reference's) carry
    the RMS."""
    out = {}
    for label, group in families(points).items():
        medians, tails, tails_best = [], [], []
        for p in group:
            at = [r for r in rows if (r["data"], r["schedule"], r["nfe_budget"]) == (
                p["data"], p["schedule"], p["nfe"])]
            cal = next((r for r in at if r["sampler"] == LABEL), None)
            lowest, pair = report.best(at, "pair", "median"), report.best(at, "pair", "rms")
            if cal is None or lowest is None or not cal.get("median") or not pair["median"]:
                continue
            medians.append(cal["median"] / lowest["median"])
            tails.append(cal["rms"] / cal["median"])
            tails_best.append(pair["rms"] / pair["median"])
        if medians:
            out[label] = {"points": len(medians), "median": geometric_mean(medians),
                          "median_max": max(medians), "tail": geometric_mean(tails),
                          "tail_best": geometric_mean(tails_best)}
    return out


def typical_lines(rows, points) -> list[str]:
    typical = typical_errors(rows, points)
    if not typical:
        return []
    return ["", "**Typical error against the tail** (the median per-sample error on the "
            "benchmark's noise instead of the RMS; the calibrated sampler's, the median over the "
            "seeds, over the smallest median error of any pair; and RMS / median error, which is "
            "large where a few samples end in another mode than the reference's and carry the "
            "RMS): " + "; ".join(
                f"{label}: median error {t['median']:.3f} of the best pair's (geometric mean, "
                f"worst point {t['median_max']:.3f}), RMS / median {t['tail']:.2f} against "
                f"{t['tail_best']:.2f} for the best pair" for label, t in typical.items()) + "."]


def summary_table(points, meta) -> list[str]:
    """The summary table: a row per family and one for all (also README's, bench.readme)."""
    lines = ["| problems | points | geometric mean of the median ratios | geometric mean of the "
             "worst ratios | worst | points with median above "
             f"{MEDIAN_ABOVE} | points with worst above {WORST_ABOVE} | geometric mean (median) "
             "/ best on default schedule |",
             "|---|---|---|---|---|---|---|---|"]
    nfes = meta.get("nfes") or sorted({p["nfe"] for p in points})
    span = f"NFE {min(nfes)}" + (f"-{max(nfes)}" if max(nfes) > min(nfes) else "")
    for label, group in families(points).items():
        lines.append(summary(group, f"{label}, {span}"))
    if len(families(points)) > 1:
        lines.append(summary(points, f"all, {span}"))
    return lines


def readme_lines(rows, points, meta) -> list[str]:
    """What README shows of this benchmark (bench.readme): the summary table, the cost, the
    report's test ratio as a guide and the typical error against the tail."""
    return [*summary_table(points, meta), *interval_lines(points), *cost_lines(points),
            *guide_lines(rows, points), *typical_lines(rows, points)]


def draw_lines(first, second) -> list[str]:
    """Two draws of the test noise (``first``, ``second``: each run's points; the same
    calibrations, other test noise): the summary numbers of each over the points both have,
    and the points above MEDIAN_ABOVE on one draw only: what of a point's verdict is the
    test noise's."""
    key = (lambda p: (p["data"], p["schedule"], p["nfe"]))
    other = {key(p): p for p in second}
    pairs = [(p, other[key(p)]) for p in first if key(p) in other]
    lines = ["| test noise | points | geometric mean of the median ratios | of the worst ratios | "
             "medians above 1.02 | worst above 1.1 | same best pair as the first draw |",
             "|---|---|---|---|---|---|---|"]
    same = sum(a["best"] == b["best"] for a, b in pairs)
    for n, label in enumerate(("first draw (the committed run)", "second draw")):
        mine = [pair[n] for pair in pairs]
        lines.append(f"| {label} | {len(mine)} | "
                     f"{geometric_mean(p['ratio'] for p in mine):.3f} | "
                     f"{geometric_mean(p['ratio_max'] for p in mine):.3f} | "
                     f"{sum(p['ratio'] > MEDIAN_ABOVE for p in mine)} | "
                     f"{sum(p['ratio_max'] > WORST_ABOVE for p in mine)} | "
                     f"{'-' if n == 0 else f'{same} of {len(pairs)}'} |")

    def names(selected):
        return ", ".join(f"{a['data']}/{a['schedule']} {a['nfe']} NFE ({a['ratio']:.2f} / "
                         f"{b['ratio']:.2f})" for a, b in selected) or "none"
    both = [(a, b) for a, b in pairs if a["ratio"] > MEDIAN_ABOVE and b["ratio"] > MEDIAN_ABOVE]
    one = [(a, b) for a, b in pairs if (a["ratio"] > MEDIAN_ABOVE) != (b["ratio"] > MEDIAN_ABOVE)]
    return [*lines, "", f"Median above 1.02 on both draws (first / second): {names(both)}. "
            f"On one draw only: {names(one)}."]


def pair_choice(meta) -> str:
    """How the run chose its best pairs (meta["pair_samples"]: the samples every pair ran on),
    as a sentence; "" for a run that did not record it."""
    subset = meta.get("pair_samples")
    if not subset:
        return ""
    if all(subset.get(name) == n for name, n in meta["samples"].items()):
        return (" The best pair: the lowest RMS of every deterministic sampler x every host "
                "scheduler on all the samples.")
    return (f" The best pair: every deterministic sampler x every host scheduler on the first "
            f"{subset} samples, the {meta.get('finalists')} best per NFE on all, the lowest of "
            "those.")


def write_markdown(out: Path, rows, points, meta, name="calibrated"):
    """OUT/NAME.md from a run's rows, points and meta."""
    seeds = meta.get("seeds", 1)
    given = meta.get("options_given")  # calibrate options other than the defaults (--options)
    lines = [
        "# The calibrated LML sampler against the whole field",
        "",
        "`bash scripts/bench.sh calibrated` (python -m bench.calibrated). Each point: "
        "`lml_core.calibrate` with "
        + (f"the options `{json.dumps(given)}`" if given else "the default options")
        + f" on {meta['calibration_samples']} float32 "
        f"noises of its own, {seeds} time(s) with other noise (calibration seeds "
        f"{meta.get('calibration_seeds', 'not recorded')}, all apart from the benchmark's), "
        "then each calibrated sampler on the benchmark's noise, which no calibration saw (the "
        "same for every seed); RMS distance to the reference ODE solution from the same noise, "
        "against every deterministic built-in of the host run from its own code (CFG++ "
        "samplers run but do not count as the best built-in: they follow another ODE). A "
        "point's ratio is its calibrated RMS over the best pair's: the median and the worst "
        "over the seeds." + pair_choice(meta),
        "",
        *([f"**Another draw of the test noise** (--noise-draw {meta['noise_draw']}: its seeds "
           f"+ {meta['noise_draw']}); the calibrations are the committed run's.", ""]
          if meta.get("noise_draw") else []),
        f"Samples per problem {meta['samples']}, reference {meta['ref_steps']} RK4 steps, "
        f"{meta['threads']} thread(s); run took {meta['wall_seconds']:.0f} s.",
        "",
        "**Peak memory** of a calibration: " + meta.get(
            "memory", "not measured in this run") + ".",
        "",
        "**Cost.** One calibration with the default options of a 200-dimensional exact "
        "mixture, 10 Karras steps, 32 noises, on one thread: "
        + (f"{meta['cost_200d']['seconds']:.1f} s, {meta['cost_200d']['model_calls']} batched "
           f"model calls, {meta['cost_200d']['evaluations']} per-sample evaluations."
           if meta.get("cost_200d") else "not measured in this run."),
        "",
        *cost_lines(points),
        *guide_lines(rows, points),
        *typical_lines(rows, points),
        "",
        "## Summary: calibrated RMS / best pair's RMS at the same NFE, over the calibration "
        "seeds",
        "",
        *summary_table(points, meta),
        *interval_lines(points),
    ]
    intervals = "; 90% interval over the test samples" if any(
        "ratio_interval" in p for p in points) else ""  # a run before them: none
    lines += ["", "## Per point", "",
              "| data | schedule | NFE | best pair | its RMS | calibrated RMS (median) | ratio "
              f"(median{intervals}) | ratio (worst) | best on default "
              "schedule | its RMS | / best on "
              "default schedule | runs (over the seeds) | seconds (median) | per-sample "
              "evaluations: median (min-max) | model calls (median) | peak RSS above start, "
              "MiB: median (max) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        c = p["cost"]
        evaluations = (f"{c['evaluations']:.0f} ({c['evaluations_min']}-{c['evaluations_max']})"
                       if "evaluations_min" in c else f"{c['evaluations']}")
        memory = (f"{c['peak_rss_mb']:.0f} ({c['peak_rss_mb_max']:.0f})"
                  if "peak_rss_mb" in c else "")
        interval = (" ({:.2f}-{:.2f})".format(*p["ratio_interval"])
                    if "ratio_interval" in p else "")
        lines.append(f"| {p['data']} | {p['schedule']} | {p['nfe']} | {p['best']} | "
                     f"{p['best_rms']:.4f} | {p['calibrated']:.4f} | {p['ratio']:.3f}"
                     f"{interval} | {p.get('ratio_max', p['ratio']):.3f} | "
                     f"{p['best_default']} | {p['best_default_rms']:.4f} | "
                     f"{p['ratio_default']:.3f} | {p.get('chosen_bases', p['base'])} | "
                     f"{c['seconds']:.1f} | {evaluations} | {c['model_calls']:.0f} | "
                     f"{memory} |")
    lines += ["", "## The deterministic table (RMS; the calibrated sampler as lml_calibrated, "
              "its median over the calibration seeds)", ""]
    lines.append(report.error_tables(rows))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
