"""The calibrated LML sampler against the whole deterministic field (python -m bench.calibrated,
bash scripts/bench.sh calibrated -> docs/bench/calibrated.md).

For each problem (the exact mixtures under Karras and flow schedules, the digits network at cfg
1, 3 and 6) and each NFE budget 4-10, ``lml_core.calibrate`` fits the sampler on 32 noises of
its own (a generator seeded apart from the benchmark's), with the default options, through the
same HostModel the built-ins get; the calibrated sampler then samples the benchmark's noise,
which it never saw, and is scored like every built-in: RMS distance to the reference ODE
solution from the same noise.  Every point is calibrated ``--seeds`` times (default 5), each
on other calibration noise (seeds CALIBRATION_SEED + 0, 1, ...; the benchmark's test noise is
the same for all): a point reports the median and the worst (largest) ratio to the best pair
over the seeds.  The calibration's cost (seconds, batched model calls, per-sample
evaluations, peak RSS above its start: bench.rss) is recorded per seed and summarised per
point (median, min-max).  The page and README's blocks from it: bench.calibrated_page.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter

import torch

from lml_core import CALIBRATE_DEFAULTS, calibrate, sample_lml_calibrated
from lml_core.calibrate_options import checked_schedule
from lml_core.field import lml_start_name

from . import field, report
from .calibrated_page import LABEL, write_markdown
from .common import (
    bootstrap_ratio,
    digits_noise,
    initial_noise,
    median_error,
    rms,
    squared_errors,
)
from .digits import CFGDigitsModel, RowLabelledDigitsModel, fitted_size_warning_off, with_labels
from .exact import EXACT_DATASETS
from .pairs import FINALISTS, best_pairs
from .rss import MB, PeakRSS
from .run import CFG_SCALES, SAMPLES, deterministic_specs, log, prepare
from .suite import (
    NOISE_SEED,
    SCHEDULES,
    Problem,
    evaluate,
    exact_problems,
    run_sampler,
    sigmas_for,
    steps_for_nfe,
)

NFES = [4, 5, 6, 8, 10]
MEMORY = ("anonymous resident memory (RSS less file-backed and shared pages) above its value "
          "at the start of that calibration, read from /proc/self/statm every 10 ms by a thread "
          "of the benchmark's process (bench.rss; glibc's malloc_trim(0) first, so memory an "
          "earlier calibration freed does not hide this one's growth; a peak shorter than 10 ms "
          "can be missed)")
CALIBRATION_SAMPLES = 32
CALIBRATION_SEED = 31337  # apart from the benchmark's noise (NOISE_SEED, DIGITS_NOISE_SEED)
SEEDS = 5  # calibrations per point, each on its own noise (CALIBRATION_SEED + 0, 1, ...)


def calibration_field(problem, nfe):
    """What calibrate measures at ``nfe`` on ``problem``, as LML Calibrate gives it in ComfyUI:
    (every host scheduler's sigmas that start where the problem's noise is, the host's
    deterministic samplers, their own sigmas where KSampler gives them other ones: its discard
    rule, fewer steps at the same model calls)."""
    start = float(sigmas_for("euler", problem.kind, nfe)[0])
    schedules = {}
    for scheduler in field.scheduler_names():
        try:
            sigmas = field.host_sigmas("euler", scheduler, problem.flow, nfe).to(torch.float32)
        except Exception:  # a scheduler the host cannot give here: not in the field
            continue
        if (len(sigmas) == nfe + 1 and torch.isfinite(sigmas).all()
                and abs(float(sigmas[0]) - start) <= 1e-4 * start):
            schedules[scheduler] = sigmas
    samplers = {name: field.host_function(name) for name in field.DETERMINISTIC}
    steps = {name: steps_for_nfe(name, nfe) for name in samplers}
    own = {}
    for name in samplers:
        if field.discards_penultimate(name) or steps[name] != nfe:
            own[name] = {}
            for s in schedules:
                sigmas = field.host_sigmas(name, s, problem.flow, steps[name]).to(torch.float32)
                try:
                    checked_schedule(sigmas, s)
                except ValueError:  # as LML Calibrate: no sigmas at these steps (kl_optimal's
                    continue  # [nan, 0] at 1 step), so this schedule is left out
                own[name][s] = sigmas
    return schedules, samplers, own


def restricted(field_of, schedulers):
    """calibration_field's (schedules, samplers, own sigmas) with only the host schedulers
    ``schedulers`` (None: all)."""
    schedules, samplers, own = field_of
    if not schedulers:
        return schedules, samplers, own
    keep = lambda table: {k: v for k, v in table.items() if k in schedulers}  # noqa: E731
    return keep(schedules), samplers, {name: keep(table) for name, table in own.items()}


def calibration_noise(problem, samples, seed):
    """The calibration's own noise for ``seed`` (0, 1, ...), float32 at the first sigma."""
    generator = torch.Generator().manual_seed(CALIBRATION_SEED + seed)
    return initial_noise(problem.kind, torch.randn(samples, problem.x_start[0].numel(),
                                                   dtype=torch.float64,
                                                   generator=generator)).to(torch.float32)


def for_calibration(problem, noise):
    """(model, noise) a calibration of ``problem`` runs on: the problem's own, except that the
    digits network's rows carry their class (RowLabelledDigitsModel): calibrate runs subsets of
    the rows, and the network's class by batch position would follow the subset, not the
    row."""
    if isinstance(problem.model, CFGDigitsModel):
        return RowLabelledDigitsModel(problem.model), with_labels(noise)
    return problem.model, noise


def spread(values) -> dict:
    """{"median", "min", "max"} of ``values``."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def lml_start(calibration) -> str:
    """The LML base a calibration started from, or the built-in whose steps it started from
    ("deis" for the start "lml(deis) + kl_optimal"); "" for a built-in sampler's calibration."""
    if calibration.sampler != "lml":
        return ""
    return lml_start_name(calibration.report.get("start", "")) or calibration.base


def seed_row(problem, nfe, seed, calibration, memory, sampler_host, x) -> dict:
    """One calibration seed's record: its test RMS, what it chose and the timesteps it runs,
    its cost."""
    r = calibration.report
    return {"seed": seed, "nfe": sampler_host.calls, "rms": rms(x, problem.reference),
            "median": median_error(x, problem.reference), "base": lml_start(calibration),
            "runs": calibration.sampler, "chosen": r["chosen"],
            "sigmas": list(calibration.sigmas),
            "calibrated": r["calibrated"], "iterations": r["iterations"],
            "heldout_rms": r.get("heldout_rms"), "heldout_rms_base": r.get("heldout_rms_base"),
            **{k: v for k, v in r.items() if k.startswith("test")},  # the report's test scores
            "cost": {"seconds": round(memory.seconds, 2), "model_calls": r["model_calls"],
                     "evaluations": r["model_evaluations"],
                     "peak_rss_mb": round(memory.above_start / MB, 1)}}


def seeds_row(problem, nfe, seeds) -> dict:
    """The point's row over its calibration seeds: the median seed's RMS (``rms``; the
    deterministic table shows it), the worst's (``rms_max``), each seed's record (``seeds``)
    and the cost's median and range; the other fields are the median seed's (the lower
    median for an even count)."""
    ranked = sorted(seeds, key=lambda s: s["rms"])
    middle = ranked[(len(ranked) - 1) // 2]
    costs = [s["cost"] for s in seeds]
    cost = {}
    for key in ("seconds", "model_calls", "evaluations", "peak_rss_mb"):
        values = spread(c[key] for c in costs)
        cost[key] = round(values["median"], 2)
        cost[f"{key}_min"], cost[f"{key}_max"] = values["min"], values["max"]
    return {"data": problem.name, "schedule": problem.kind, "sampler": LABEL,
            "scheduler": None, "nfe_budget": nfe, "nfe": middle["nfe"],
            "rms": statistics.median(s["rms"] for s in seeds),
            "rms_max": max(s["rms"] for s in seeds),
            "median": statistics.median(s["median"] for s in seeds),
            **{k: middle[k] for k in ("base", "runs", "chosen", "calibrated", "iterations",
                                      "heldout_rms", "heldout_rms_base")},
            "median_seed": middle["seed"], "cost": cost, "seeds": seeds}


def calibrated_rows(problem, nfes, samples, options, log, seeds=1, errors=None,
                    schedulers=None, noises=None):
    """Rows of the calibrated sampler (fitted per NFE and calibration seed on its own noise in
    float32, as ComfyUI runs it, starting from the best pair it measures; sampling the
    problem's noise), one per NFE over the ``seeds`` calibrations (``seeds_row``).
    ``errors``: a dict that gets each point's per-sample squared errors, one tensor per seed,
    {(data, schedule, nfe): [...]}; ``schedulers``: only these host schedulers in the
    calibration's field (None: all); ``noises``: the calibrations' noises (float32, one
    calibration each) instead of ``seeds`` draws of ``samples`` of their own."""
    rows = []
    if noises is None:
        noises = [calibration_noise(problem, samples, seed) for seed in range(seeds)]
    for nfe in nfes:
        sigmas = sigmas_for("euler", problem.kind, nfe)
        schedules, samplers, own = restricted(calibration_field(problem, nfe), schedulers)
        records = []
        for seed, noise in enumerate(noises):
            model, noise = for_calibration(problem, noise)
            host = field.HostModel(model, flow=problem.flow)
            with PeakRSS() as memory:
                calibration = calibrate(host, noise, sigmas, schedules=schedules,
                                        samplers=samplers, sampler_schedules=own, **options)
            sampler_host = field.HostModel(problem.model, flow=problem.flow)
            with fitted_size_warning_off():
                x = sample_lml_calibrated(sampler_host, problem.x_start.to(torch.float32),
                                          sigmas, calibration=calibration, samplers=samplers,
                                          disable=True)
            records.append(seed_row(problem, nfe, seed, calibration, memory, sampler_host, x))
            if errors is not None:
                errors.setdefault((problem.name, problem.kind, nfe), []).append(
                    squared_errors(x, problem.reference))
            s = records[-1]
            log(f"    {LABEL} {nfe:>2} NFE seed {seed}: rms {s['rms']:.4f} ({s['chosen']}, "
                f"{s['iterations']} LM steps, {s['cost']['seconds']:.1f}s, "
                f"{s['cost']['evaluations']} evals, {s['cost']['peak_rss_mb']:.0f} MiB)")
        rows.append(seeds_row(problem, nfe, records))
    return rows


def comparison(rows):
    """Per (data, schedule, nfe): the calibrated RMS over the best (sampler, scheduler) pair's
    ("ratio": the median over the calibration seeds, "ratio_max": the worst; the pair named)
    and over the best sampler on the fixed schedule's ("ratio_default", median); CFG++
    samplers excluded, as in the main benchmark."""
    out = []
    for cal in (r for r in rows if r["sampler"] == LABEL):
        at = [r for r in rows if (r["data"], r["schedule"], r["nfe_budget"]) == (
            cal["data"], cal["schedule"], cal["nfe_budget"])]
        pair, default = report.best(at, "pair", "rms"), report.best(at, "default", "rms")
        best = pair or default  # rows from before the field was pairs have no pair rows
        seeds = cal.get("seeds") or [cal]  # rows from before the seeds: one calibration
        ratios = [s["rms"] / best["rms"] for s in seeds]
        out.append({"data": cal["data"], "schedule": cal["schedule"], "nfe": cal["nfe_budget"],
                    "best": report.label(best), "best_sampler": best["sampler"],
                    "best_scheduler": best.get("scheduler"), "best_rms": best["rms"],
                    "calibrated": cal["rms"], "calibrated_max": max(s["rms"] for s in seeds),
                    "seeds": len(seeds), "ratio": statistics.median(ratios),
                    "ratio_max": max(ratios), "ratios": ratios,
                    "best_default": default["sampler"], "best_default_rms": default["rms"],
                    "ratio_default": cal["rms"] / default["rms"], "base": cal["base"],
                    "chosen_bases": chosen_bases(seeds), "cost": cal["cost"]})
    return out


def pair_squared_errors(problem, sampler, scheduler, nfe):
    """Each sample's squared error of a (sampler, scheduler) pair on the problem's noise."""
    x, _ = run_sampler(problem.model, problem.x_start, problem.kind, sampler, nfe,
                       scheduler=scheduler)
    return squared_errors(x, problem.reference)


def add_intervals(points, problems, errors):
    """Each point's "ratio_interval": the 90% bootstrap interval, over the benchmark's test
    samples, of its median ratio (bench.common.bootstrap_ratio; the best pair rerun here for
    its per-sample errors).  ``problems``: {(data, schedule): Problem}; ``errors``:
    calibrated_rows' per-sample squared errors."""
    for p in points:
        problem = problems[(p["data"], p["schedule"])]
        best = pair_squared_errors(problem, p["best_sampler"], p["best_scheduler"], p["nfe"])
        if abs(float(best.mean().sqrt()) / p["best_rms"] - 1) > 1e-6:
            raise RuntimeError(f"{p['best']} at {p['data']}/{p['schedule']} {p['nfe']} NFE: "
                               "its rerun differs from its row")
        p["ratio_interval"] = bootstrap_ratio(errors[(p["data"], p["schedule"], p["nfe"])],
                                              best)


def chosen_bases(seeds) -> str:
    """What the seeds' calibrations run, counted: "ipndm_v x4, uni_pc x1" (the LML base, or
    the host sampler a calibration chose)."""
    counts = Counter(s.get("base") or s.get("runs") or "?" for s in seeds)
    return ", ".join(f"{name} x{n}" for name, n in counts.most_common())


def digits_problems(cfgs, samples, ref_steps, log, draw=0):
    from .digits import load_or_train

    net, _ = load_or_train(log)
    for cfg in cfgs:
        for kind in SCHEDULES:
            noise = digits_noise(samples, draw)
            yield Problem(f"digits cfg {cfg:g}", kind, CFGDigitsModel(net, kind == "flow", cfg),
                          noise, ref_steps, log=log)


def benchmark_problems(names, cfgs, samples, ref_steps, log, draw=0) -> list:
    """The exact mixtures ``names`` and the digits network at ``cfgs``, each schedule, on the
    benchmark's noise (``draw`` > 0: another draw of it, from the seeds + ``draw``);
    ``samples``: a count, or a function of the data set's name."""
    count = samples if callable(samples) else (lambda _: samples)
    mixtures = exact_problems(names, count, ref_steps, lambda _: NOISE_SEED + draw, log)
    return [p for _, p in mixtures] + list(digits_problems(cfgs, count("digits"), ref_steps, log,
                                                          draw))


def cost_200d(log, steps=10, samples=CALIBRATION_SAMPLES):
    """Seconds and model calls of one calibration with the default options: a 200-D exact
    mixture (6 anisotropic components, as mix64d), a 10-step Karras schedule, 32 noises, on the
    current thread count."""
    from .exact import GaussianMixture, MixtureModel, _random_rotation

    gen = torch.Generator().manual_seed(200)
    k, dim = 6, 200
    variances = torch.exp(torch.empty(k, dim, dtype=torch.float64).uniform_(
        -5.3, -0.7, generator=gen))
    mixture = GaussianMixture("mix200d", torch.full((k,), 1.0 / k, dtype=torch.float64),
                              0.6 * torch.randn(k, dim, generator=gen, dtype=torch.float64),
                              torch.stack([_random_rotation(dim, gen) for _ in range(k)]),
                              variances, 0.0)
    host = field.HostModel(MixtureModel(mixture, False), flow=False)
    noise = initial_noise("karras", torch.randn(samples, dim, dtype=torch.float64,
                                                generator=gen))
    started = time.perf_counter()
    calibration = calibrate(host, noise, sigmas_for("euler", "karras", steps).double())
    seconds = time.perf_counter() - started
    r = calibration.report
    result = {"dim": dim, "steps": steps, "samples": samples, "seconds": round(seconds, 2),
              "threads": torch.get_num_threads(), "model_calls": r["model_calls"],
              "evaluations": r["model_evaluations"], "iterations": r["iterations"]}
    log(f"  cost: 200-D, {steps} steps, {samples} noises: {seconds:.1f} s, "
        f"{r['model_calls']} model calls, {r['model_evaluations']} evaluations")
    return result


def parse(argv):
    parser = argparse.ArgumentParser(description="calibrated LML vs the deterministic field")
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--quick", action="store_true", help="mix2d and digits cfg 3, 5 NFE")
    parser.add_argument("--ref-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", nargs="*", default=None)
    parser.add_argument("--cfg", nargs="*", type=float, default=None)
    parser.add_argument("--nfes", nargs="*", type=int, default=None)
    parser.add_argument("--schedules", nargs="*", default=None)
    parser.add_argument("--options", default="{}",
                        help="calibrate options as JSON (default: lml_core's defaults)")
    parser.add_argument("--seeds", type=int, default=SEEDS,
                        help=f"calibrations per point, each on other noise (default {SEEDS})")
    parser.add_argument("--noise-draw", type=int, default=0,
                        help="0: the committed test noise; K: another draw of it (its seeds + K), "
                        "to see which differences are the test noise's")
    parser.add_argument("--cost-only", action="store_true",
                        help="only time one 200-D, 10-step calibration")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite NAME.md from NAME.json in --out")
    parser.add_argument("--name", default="calibrated",
                        help="writes OUT/NAME.json and NAME.md (another name: a run with other "
                             "--options or data beside the committed one)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    out = prepare(args)

    if args.cost_only:
        return cost_200d(log)
    if args.markdown_only:
        data = json.loads((out / f"{args.name}.json").read_text())
        write_markdown(out, data["rows"], data["points"], data["meta"], args.name)
        return data["rows"], data["points"]
    names = args.data if args.data is not None else (["mix2d"] if args.quick
                                                       else list(EXACT_DATASETS))
    cfgs = args.cfg if args.cfg is not None else ([3.0] if args.quick else list(CFG_SCALES))
    nfes = args.nfes or ([5] if args.quick else NFES)
    samples = (lambda name: 256) if args.quick else (lambda name: SAMPLES[name])
    ref_steps = 40 if args.quick else args.ref_steps
    options = json.loads(args.options)
    started = time.time()
    rows, all_selection, all_failures = [], [], []
    problems = [p for p in benchmark_problems(names, cfgs, samples, ref_steps, log,
                                              args.noise_draw)
                if args.schedules is None or p.kind in args.schedules]
    # Every pair on every sample: the default benchmark's two stages (bench.run.PAIR_SAMPLES,
    # then FINALISTS) missed the best pair at 6 sub3072d points (50 samples chose the
    # finalists there), by up to 1.21x: docs/bench/pair_check.md.
    pair_samples = {n: samples(n) for n in [*names, "digits"]}
    errors = {}  # each point's per-sample squared errors per seed: its ratio's interval
    for problem in problems:
        guided = problem.name.startswith("digits")
        log(f"  {problem.name}/{problem.kind}")
        rows += evaluate(problem, deterministic_specs(guided=guided), nfes, log=log)
        subset = pair_samples["digits" if guided else problem.name]
        pair_rows, selection, failures = best_pairs(problem, field.DETERMINISTIC, nfes, subset,
                                                    log=log)
        rows += pair_rows
        all_selection += selection
        all_failures += failures
        rows += calibrated_rows(problem, nfes, CALIBRATION_SAMPLES, options, log, args.seeds,
                                errors)
    points = comparison(rows)
    add_intervals(points, {(p.name, p.kind): p for p in problems}, errors)
    cost = cost_200d(log)
    meta = {"cost_200d": cost, "calibration_samples": CALIBRATION_SAMPLES,
            "seeds": args.seeds,
            "calibration_seeds": [CALIBRATION_SEED + seed for seed in range(args.seeds)],
            "memory": MEMORY,
            "options": {**CALIBRATE_DEFAULTS, **options}, "options_given": options,
            "samples": {n: samples(n) for n in [*names, "digits"]}, "ref_steps": ref_steps,
            "nfes": nfes, "threads": args.threads, "pair_samples": pair_samples,
            "noise_draw": args.noise_draw,
            "finalists": FINALISTS, "pair_failures": all_failures,
            "wall_seconds": time.time() - started}
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                       "points": points,
                                                       "pair_selection": all_selection},
                                                      indent=1))
    write_markdown(out, rows, points, meta, args.name)
    for p in points:
        log(f"{p['data']}/{p['schedule']} {p['nfe']:>2}: {p['ratio']:.3f} (worst "
            f"{p['ratio_max']:.3f}) vs {p['best']} ({p['ratio_default']:.3f} vs "
            f"{p['best_default']})")
    log(f"done in {time.time() - started:.0f}s; wrote {out / f'{args.name}.md'}")
    return rows, points


if __name__ == "__main__":
    main()
