"""Does a calibration transfer?  (python -m bench.transfer, bash scripts/bench.sh transfer ->
docs/bench/transfer.{json,md}; issue 25 item 7.)

On the benchmark's digits network (Karras schedule, NFE 4, 6, 8), ``lml_core.calibrate`` with
its default options fits on 32 noises of its own (bench.calibrated.calibration_noise, seeds
CALIBRATION_SEED + 0, 1, ...; rows labelled for RowLabelledDigitsModel), and the calibrated
sampler is scored on the benchmark's digits test noise (seed 77), which no calibration saw:

(a) prompts: a calibration fitted on class 7 alone (every calibration row labelled 7, cfg 3)
    is scored on each class's test rows (row i of the test noise is class i mod 10, sampled with
    a model that guides every row to that class: ClassDigitsModel), beside the calibration
    fitted on all classes (rows labelled i mod 10), scored the same way;
(b) cfg: the all-class calibration fitted at cfg 3 is scored at cfg 1, 2, 4.5 and 6 (every test
    row, its own class), beside a calibration fitted at that cfg itself.

A score is the ratio "calibrated RMS / best pair RMS on the same rows": RMS distance to the
reference ODE solution from the same noise (RK4, 100 steps), the best pair being the lowest of
every deterministic host sampler (bench.field.DETERMINISTIC) x every host scheduler at the same
NFE, each run with KSampler's sigmas (its discard rule) at no more than the NFE's model calls
per sample (bench.pairs.select, on all of those rows: no subset).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types

import torch

from lml_core import CALIBRATE_DEFAULTS, calibrate, sample_lml_calibrated

from . import field, pairs
from .calibrated import CALIBRATION_SAMPLES, CALIBRATION_SEED, calibration_field, calibration_noise
from .common import DIGITS_NOISE_SEED, digits_noise, rms
from .digits import (
    CLASSES,
    CFGDigitsModel,
    RowLabelledDigitsModel,
    fitted_size_warning_off,
    label_columns,
    load_or_train,
    with_labels,
)
from .run import SAMPLES, log, prepare
from .suite import Problem, sigmas_for

NFES = [4, 6, 8]
FIT_CFG = 3.0
FIT_CLASS = 7
CFGS = [1.0, 2.0, 4.5, 6.0]  # where the cfg-3 calibration is scored (b)
TEST_SAMPLES = 200  # the benchmark's digits test noise (seed 77): its first 200 rows, 20 a class
TEST_SEED = DIGITS_NOISE_SEED  # bench.calibrated.digits_problems' noise
SEEDS = 3
KIND = "karras"
ALL = "all classes"


class ClassDigitsModel:
    """The guided digits model with every row guided to one class ``label`` (one prompt)."""

    def __init__(self, model: CFGDigitsModel, label: int):
        self.model, self.flow, self.label = model, model.flow, int(label)

    def __call__(self, x, sigma, model_options=None, **extra_args):
        labels = torch.full((x.shape[0],), self.label, dtype=torch.long)
        return self.model.guided(x, sigma, labels, model_options)


def with_class(noise, label):
    """``noise`` [B, 64] with every row labelled ``label`` (as with_labels, for
    RowLabelledDigitsModel)."""
    return torch.cat([noise, label_columns(torch.full((noise.shape[0],), int(label)), noise)], 1)


def test_noise(samples):
    """The first ``samples`` rows of the benchmark's digits noise (bench.calibrated's
    digits_problems: SAMPLES["digits"] rows, seed 77)."""
    return digits_noise(max(samples, SAMPLES["digits"]))[:samples]


def test_problem(net, cfg, label, noise, ref_steps, log):
    """The test rows at ``cfg``: class ``label``'s rows (i mod 10 == label) guided to it, or
    (label None) every row guided to its own class."""
    model = CFGDigitsModel(net, False, cfg)
    if label is not None:
        model, noise = ClassDigitsModel(model, label), noise[label::CLASSES]
    name = f"digits cfg {cfg:g}" + ("" if label is None else f" class {label}")
    return Problem(name, KIND, model, noise, ref_steps, log=log)


def best_pair(problem, nfes, samplers, schedulers):
    """{nfe: the lowest-RMS (sampler, scheduler) pair on all of the problem's rows}, with how
    many pairs ran and the failures (a pair over the NFE's model calls is one)."""
    ranking, failures = pairs.select(problem, samplers, schedulers, nfes,
                                     len(problem.x_start))
    out = {}
    for nfe, found in ranking.items():
        score, sampler, scheduler = found[0]
        out[nfe] = {"sampler": sampler, "scheduler": scheduler, "rms": score,
                    "pairs": len(found),
                    "failed": sum(f["nfe"] == nfe for f in failures)}
    return out


def fit(net, cfg, label, nfe, seed, samples, options, fields):
    """One calibration at ``cfg`` on calibration seed ``seed``: every row labelled ``label``,
    or (label None) row i labelled i mod 10."""
    shape = types.SimpleNamespace(kind=KIND, flow=False, x_start=torch.zeros(1, 64))
    noise = calibration_noise(shape, samples, seed)
    noise = with_labels(noise) if label is None else with_class(noise, label)
    if nfe not in fields:
        fields[nfe] = calibration_field(shape, nfe)
    schedules, samplers, own = fields[nfe]
    host = field.HostModel(RowLabelledDigitsModel(CFGDigitsModel(net, False, cfg)), flow=False)
    started = time.perf_counter()
    calibration = calibrate(host, noise, sigmas_for("euler", KIND, nfe), schedules=schedules,
                            samplers=samplers, sampler_schedules=own, **options)
    return calibration, time.perf_counter() - started


def score(calibration, problem, nfe, samplers):
    """(RMS of the calibrated sampler on the problem's rows, model calls per sample)."""
    host = field.HostModel(problem.model, flow=False)
    with fitted_size_warning_off():
        x = sample_lml_calibrated(host, problem.x_start.to(torch.float32),
                                  sigmas_for("euler", KIND, nfe), calibration=calibration,
                                  samplers=samplers, disable=True)
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"calibrated sampler: non-finite samples on {problem.name}")
    return rms(x, problem.reference), host.calls


def runs(calibration) -> str:
    return calibration.base or calibration.sampler or "?"


def ratios_of(records):
    return {"median": statistics.median(r["ratio"] for r in records),
            "worst": max(r["ratio"] for r in records)}


def class_summary(records, fit_label, nfe):
    """Per (fit, NFE): the ratio on class 7 (median and worst over seeds), and on the other
    nine classes: the median over the classes of each class's median over the seeds, and the
    worst over every class and seed (named)."""
    at = [r for r in records if r["fit"] == fit_label and r["nfe"] == nfe]
    own = [r for r in at if r["class"] == FIT_CLASS]
    others = [r for r in at if r["class"] != FIT_CLASS]
    per_class = {c: statistics.median(r["ratio"] for r in others if r["class"] == c)
                 for c in sorted({r["class"] for r in others})}
    worst = max(others, key=lambda r: r["ratio"]) if others else None
    return {"fit": fit_label, "nfe": nfe, "class7": ratios_of(own) if own else None,
            "others_median": statistics.median(per_class.values()) if per_class else None,
            "others_worst": worst["ratio"] if worst else None,
            "others_worst_at": {"class": worst["class"], "seed": worst["seed"]} if worst else None,
            "per_class_median": per_class}


def cfg_summary(records, cfg, nfe):
    at = [r for r in records if r["test_cfg"] == cfg and r["nfe"] == nfe]
    out = {"cfg": cfg, "nfe": nfe}
    for key, fit_cfg in (("fit_at_3", FIT_CFG), ("fit_at_cfg", cfg)):
        mine = [r for r in at if r["fit_cfg"] == fit_cfg]
        out[key] = ratios_of(mine) if mine else None
        out[f"{key}_runs"] = sorted({r["runs"] for r in mine})
    return out


def fmt(r):
    return f"{r['median']:.3f} ({r['worst']:.3f})" if r else "-"


def classes_table(data) -> list[str]:
    """(a)'s summary: per fit and NFE, the ratio on class 7 and on the other nine (also
    README's, bench.readme)."""
    lines = [
        f"| fitted on | NFE | ratio on class {FIT_CLASS}: median (worst) | other nine classes: "
        "median over classes of the median ratio | other nine: worst ratio (class, seed) |",
        "|---|---|---|---|---|",
    ]
    for s in data["classes_summary"]:
        w = s["others_worst_at"]
        lines.append(f"| {s['fit']} | {s['nfe']} | {fmt(s['class7'])} | "
                     f"{s['others_median']:.3f} | {s['others_worst']:.3f} (class {w['class']}, "
                     f"seed {w['seed']}) |")
    return lines


def cfg_table(data) -> list[str]:
    """(b)'s table: per sampled cfg and NFE, the fit at cfg 3 against a fit at that cfg (also
    README's, bench.readme)."""
    lines = [
        "| sampled at cfg | NFE | best pair | its RMS | fitted at cfg "
        f"{FIT_CFG:g}: ratio median (worst) | runs | fitted at this cfg: ratio median "
        "(worst) | runs |", "|---|---|---|---|---|---|---|---|"]
    for s in data["cfg_summary"]:
        best = data["best_pairs"][f"cfg {s['cfg']:g}"][str(s["nfe"])]
        lines.append(f"| {s['cfg']:g} | {s['nfe']} | {best['sampler']} + {best['scheduler']} | "
                     f"{best['rms']:.4f} | {fmt(s['fit_at_3'])} | "
                     f"{', '.join(s['fit_at_3_runs'])} | {fmt(s['fit_at_cfg'])} | "
                     f"{', '.join(s['fit_at_cfg_runs'])} |")
    return lines


def write_markdown(out, data):
    meta = data["meta"]
    seeds = meta["seeds"]
    lines = [
        "# Does a calibration transfer? Other prompts (classes), other cfg",
        "",
        "`bash scripts/bench.sh transfer` (python -m bench.transfer; issue 25 item 7). The "
        f"benchmark's digits network, {meta['schedule']} schedule, NFE "
        f"{', '.join(map(str, meta['nfes']))}. Each calibration: `lml_core.calibrate` with "
        + (f"the options {meta['options_given']}" if meta.get("options_given") else
           "the default options") + f" on {meta['calibration_samples']} float32 noises of its own "
        f"(bench.calibrated.calibration_noise, calibration seeds {meta['calibration_seeds']}: "
        f"{seeds} calibrations per case), every row carrying its class "
        "(RowLabelledDigitsModel). Test noise: the first "
        f"{meta['test_samples']} rows of the benchmark's digits noise (seed {TEST_SEED}), row i "
        f"of class i mod 10 ({meta['test_samples'] // CLASSES} a class), never seen by a "
        "calibration. A ratio is the calibrated RMS over the best pair's RMS on the same rows "
        f"(RMS distance to the reference ODE solution from the same noise, RK4 "
        f"{meta['ref_steps']} steps); the best pair is the lowest of all "
        f"{len(meta['samplers'])} deterministic host samplers x {len(meta['schedulers'])} host "
        "schedulers at that NFE (KSampler's sigmas and discard rule, at most the NFE's model "
        "calls per sample), every pair run on all of those rows. A cell gives the median over "
        f"the {seeds} calibration seeds and, in brackets, the worst (largest).",
        "",
        "**Overall.** " + overall(data),
        "",
        f"Run: `{meta.get('command', 'python -m bench.transfer').strip()}`, "
        f"{meta['wall_seconds']:.0f} s wall on {meta['threads']} torch thread(s), load "
        f"average {meta['load_start']} at the start and {meta['load_end']} at the end (the "
        "machine's 2 cores shared with another benchmark).",
        "",
        f"## (a) Prompts: fitted on class {FIT_CLASS} alone vs on all classes (cfg "
        f"{FIT_CFG:g}), scored per class",
        "",
        f"Class {FIT_CLASS} fit: every calibration row labelled {FIT_CLASS}. All-class fit: "
        "row i labelled i mod 10. Each class's test rows are sampled with every row guided to "
        "that class; its best pair is found on those rows.",
        "",
    ]
    lines += classes_table(data)
    lines += ["", "Per class (median ratio over the seeds) and the best pair on that class's "
              "rows:", "",
              "| NFE | class | best pair | its RMS | "
              + " | ".join(f"fitted on {f}" for f in data["fits_a"]) + " |",
              "|---|---|---|---|" + "---|" * len(data["fits_a"])]
    for nfe in meta["nfes"]:
        for c in range(CLASSES):
            best = data["best_pairs"][f"cfg {FIT_CFG:g} class {c}"][str(nfe)]
            cells = [statistics.median(r["ratio"] for r in data["classes"]
                                       if (r["fit"], r["nfe"], r["class"]) == (f, nfe, c))
                     for f in data["fits_a"]]
            lines.append(f"| {nfe} | {c} | {best['sampler']} + {best['scheduler']} | "
                         f"{best['rms']:.4f} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    lines += ["", f"## (b) cfg: fitted at cfg {FIT_CFG:g} vs fitted at the cfg it samples at",
              "", "All classes (row labels); scored on every test row at that cfg, against "
              "the best pair at that cfg. Runs: what the seeds' calibrations run (the base of "
              "the LML fit, or a host sampler a calibration kept: Calibration.base, else "
              ".sampler).", ""]
    lines += cfg_table(data)
    (out / "transfer.md").write_text("\n".join(lines) + "\n")


def overall(data) -> str:
    """A sentence computed from the records: the largest ratio of the run and where, and how
    many (calibration, test rows) scores are above 1."""
    records = [(r["ratio"], f"fitted on {r['fit']} at cfg {r['fit_cfg']:g}, class {r['class']}, "
                f"NFE {r['nfe']}, seed {r['seed']}") for r in data["classes"]]
    records += [(r["ratio"], f"fitted on {r['fit']} at cfg {r['fit_cfg']:g}, sampled at cfg "
                 f"{r['test_cfg']:g}, NFE {r['nfe']}, seed {r['seed']}") for r in data["cfg"]]
    worst = max(records)
    above = sum(ratio > 1 for ratio, _ in records)
    return (f"{len(records)} scores (a calibration seed on a test row set); {above} of them "
            f"above 1 (worse than the best pair on those rows); the largest ratio "
            f"{worst[0]:.3f} ({worst[1]}).")


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def parse(argv):
    parser = argparse.ArgumentParser(description="calibration transfer across classes and cfg")
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: NFE 4, 20 test rows, 8 calibration noises")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ref-steps", type=int, default=100)
    parser.add_argument("--nfes", nargs="*", type=int, default=None)
    parser.add_argument("--cfgs", nargs="*", type=float, default=None)
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--test-samples", type=int, default=None)
    parser.add_argument("--calibration-samples", type=int, default=None)
    parser.add_argument("--samplers", nargs="*", default=None,
                        help="a subset of the deterministic host samplers (default: all)")
    parser.add_argument("--schedulers", nargs="*", default=None,
                        help="a subset of the host schedulers (default: all runnable)")
    parser.add_argument("--options", default="{}",
                        help="calibrate options as JSON (default: lml_core's defaults)")
    parser.add_argument("--markdown-only", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    out = prepare(args)
    if args.markdown_only:
        data = json.loads((out / "transfer.json").read_text())
        write_markdown(out, data)
        return data
    started, load_start = time.time(), load_average()
    nfes = args.nfes or ([4] if args.quick else NFES)
    cfgs = args.cfgs if args.cfgs is not None else ([6.0] if args.quick else CFGS)
    test_samples = args.test_samples or (20 if args.quick else TEST_SAMPLES)
    cal_samples = args.calibration_samples or (8 if args.quick else CALIBRATION_SAMPLES)
    ref_steps = 40 if args.quick else args.ref_steps
    options = json.loads(args.options)
    samplers = list(args.samplers or field.DETERMINISTIC)
    schedulers = pairs.runnable(False, nfes)
    if args.schedulers:
        schedulers = [s for s in schedulers if s in args.schedulers]
    net, _ = load_or_train(log)
    noise = test_noise(test_samples)
    quiet = lambda _: None  # noqa: E731

    # The test problems and their best pairs.
    problems = {f"cfg {FIT_CFG:g} class {c}": test_problem(net, FIT_CFG, c, noise, ref_steps,
                                                           quiet) for c in range(CLASSES)}
    for cfg in [FIT_CFG, *cfgs]:
        problems[f"cfg {cfg:g}"] = test_problem(net, cfg, None, noise, ref_steps, quiet)
    best = {}
    for key, problem in problems.items():
        t0 = time.time()
        best[key] = best_pair(problem, nfes, samplers, schedulers)
        log(f"  {key}: {len(problem.x_start)} rows, best pairs " + ", ".join(
            f"{nfe}: {b['sampler']}+{b['scheduler']} {b['rms']:.4f}"
            for nfe, b in best[key].items()) + f" ({time.time() - t0:.1f}s)")

    # The calibrations, each scored where it is asked about.
    fields, fits = {}, {}
    wanted = [(FIT_CFG, FIT_CLASS), (FIT_CFG, None)] + [(cfg, None) for cfg in cfgs]
    for cfg, label in wanted:
        for nfe in nfes:
            for seed in range(args.seeds):
                calibration, seconds = fit(net, cfg, label, nfe, seed, cal_samples, options,
                                           fields)
                fits[(cfg, label, nfe, seed)] = calibration
                log(f"  fit cfg {cfg:g} {'all' if label is None else f'class {label}'} "
                    f"NFE {nfe} seed {seed}: {runs(calibration)}, {seconds:.1f}s")
    samplers_fn = {name: field.host_function(name) for name in field.DETERMINISTIC}
    fits_a = [f"class {FIT_CLASS}", ALL]
    classes, cfg_records = [], []
    for (cfg, label, nfe, seed), calibration in fits.items():
        fit_label = ALL if label is None else f"class {label}"
        targets = []
        if cfg == FIT_CFG:
            targets += [("class", c, f"cfg {FIT_CFG:g} class {c}") for c in range(CLASSES)]
        if label is None:
            targets += [("cfg", c, f"cfg {c:g}") for c in [FIT_CFG, *cfgs]
                        if cfg in (FIT_CFG, c)]
        for kind, target, key in targets:
            value, calls = score(calibration, problems[key], nfe, samplers_fn)
            pair = best[key][nfe]
            record = {"fit_cfg": cfg, "fit": fit_label, "nfe": nfe, "seed": seed,
                      "calibration_seed": CALIBRATION_SEED + seed, "runs": runs(calibration),
                      "model_calls": calls, "rms": value, "best_rms": pair["rms"],
                      "ratio": value / pair["rms"]}
            if kind == "class":
                classes.append({**record, "class": target})
            else:
                cfg_records.append({**record, "test_cfg": target})
    data = {
        "meta": {"schedule": KIND, "nfes": nfes, "fit_cfg": FIT_CFG, "fit_class": FIT_CLASS,
                 "cfgs": cfgs, "seeds": args.seeds,
                 "calibration_seeds": [CALIBRATION_SEED + s for s in range(args.seeds)],
                 "calibration_samples": cal_samples, "test_samples": test_samples,
                 "test_seed": TEST_SEED, "ref_steps": ref_steps, "samplers": samplers,
                 "schedulers": schedulers, "options": {**CALIBRATE_DEFAULTS, **options},
                 "options_given": options,
                 "command": "python -m bench.transfer " + " ".join(argv if argv is not None
                                                                   else sys.argv[1:]),
                 "threads": args.threads, "load_start": load_start,
                 "load_end": load_average(), "wall_seconds": time.time() - started},
        "fits_a": fits_a,
        "best_pairs": {key: {str(nfe): b for nfe, b in by_nfe.items()}
                       for key, by_nfe in best.items()},
        "classes_summary": [class_summary(classes, f, nfe) for f in fits_a for nfe in nfes],
        "cfg_summary": [cfg_summary(cfg_records, cfg, nfe) for cfg in [FIT_CFG, *cfgs]
                        for nfe in nfes],
        "classes": classes, "cfg": cfg_records,
    }
    (out / "transfer.json").write_text(json.dumps(data, indent=1))
    write_markdown(out, data)
    log(f"done in {data['meta']['wall_seconds']:.0f}s; wrote {out / 'transfer.md'}")
    return data


if __name__ == "__main__":
    main()
