"""How far the calibrated sampler's family reaches when fitted by gradient descent through the
whole rollout: python -m bench.gradient_fit -> docs/bench/gradient_fit.md / .json.

The family is every deterministic sampler with one model call per step, the one that
LML Calibrate's ``linear_fits`` saves (lml_core.linear_fit): each state a linear combination of
the first latent and the model's outputs so far,

    x_{k+1} = r_{k,0} x_0 + sum_{m<=k} r_{k,m+1} D(x_m, s_m),    k = 0 .. N-1,

with the timesteps s_1 .. s_{N-1} free too (s_0 is the noise's, s_N = 0).  Here every r is free
(LML Calibrate corrects x_0's column and the last ``history`` outputs', from a built-in
sampler's rows), and the fit is Adam on the mean square error of the final sample alone,
through autograd (LML Calibrate: Levenberg-Marquardt on finite-difference Jacobians, a robust
loss, the states on the way weighted in, 20 iterations).  On the digits network the "split"
family also weights the conditional and the unconditional outputs apart (x_{k+1} = r_{k,0}
x_0 + sum_m (p_{k,m} C_m + q_{k,m} U_m), from p = cfg r, q = (1 - cfg) r): what a sampler that
reads both (ComfyUI's post-CFG hook, as the CFG++ samplers do) could express.

It starts from the exact linear map (lml_core.projection.BuiltinRows) of the one-call sampler
and scheduler that score best on the fitting noise among START_SAMPLERS x START_SCHEDULERS and
the best pair's own.  Two ways:

- **In sample**: fitted on the benchmark's test noise itself (every sample), the best iterate
  by that same error: what the family and this optimiser reach with the scored samples in hand.
  An oracle, not a sampler.
- **Out of sample**: fitted on a calibration's own noise (bench.calibrated.calibration_noise,
  ``--sizes`` noises, each calibration seed), three quarters fitting and one quarter choosing
  the iterate (every CHECK_EVERY iterations, the start included), scored on the test noise.

Ratios are to the best pair of docs/bench/calibrated.json (the same test noise); a point's
out-of-sample number is the median over the seeds.  The cost column counts sample
evaluations of the fit (iterations x steps x fitting noises, forward passes; each also has a
backward pass), beside LML Calibrate's evaluations in calibrated.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from lml_core.calibration import linear_state
from lml_core.projection import BuiltinRows

from . import calibrated as cal
from . import field, suite
from .common import reference_solution
from .digits import CLASSES, CFGDigitsModel
from .run import (
    SAMPLES,
    add_page_arguments,
    calibrated_points,
    log,
    page_only,
    prepare,
    write_page,
)
from .suite import geometric_mean

START_SAMPLERS = ("uni_pc_bh2", "uni_pc", "deis", "ipndm_v", "ipndm", "dpmpp_2m", "lms", "euler")
START_SCHEDULERS = ("kl_optimal", "sgm_uniform", "karras", "simple")
CHECK_EVERY = 50
LEARNING_RATE = {"rows": 2e-3, "timesteps": 1e-2}  # per iteration; log-sigma for the timesteps


def denoisers(problem):
    """(D(x, s), (C(x, s), U(x, s)) or None): the problem's denoiser for rows x [B, dim] at a
    0-d float64 sigma tensor, differentiable in both; the digits network's conditional and
    unconditional outputs apart (row i guided towards digit i mod 10, as CFGDigitsModel)."""
    model = problem.model
    if not isinstance(model, CFGDigitsModel):
        return (lambda x, s: model.mixture.denoise(x, s, model.flow)), None

    def parts(x, s):
        labels = torch.arange(x.shape[0], device=x.device) % CLASSES
        cond, uncond = model.parts(x, s, labels)
        return cond.double(), uncond.double()

    def guided(x, s):
        cond, uncond = parts(x, s)
        return uncond + model.cfg * (cond - uncond)
    return guided, parts


def linear_rollout(denoise, x0, sigmas, rows):
    """The final sample of ``rows`` ([N, N + 1], the linear map) on ``sigmas`` from ``x0``: a
    LINEAR_SAMPLER calibration's states (lml_core.calibration.linear_state)."""
    outputs, x = [], x0
    for k in range(len(sigmas) - 1):
        outputs.append(denoise(x, torch.tensor(sigmas[k], dtype=torch.float64)))
        x = linear_state(rows[k], x0, outputs)
    return x


@torch.no_grad()
def start(problem, nfe, best_sampler, best_scheduler, denoise, x, reference):
    """(sigmas, rows [N, N + 1], "sampler + scheduler") of the one-call sampler and scheduler
    whose exact linear map scores best on (x, reference)."""
    flow = problem.kind == "flow"
    host = field.HostModel(suite._gaussian_denoiser, flow=flow)
    found = []
    for name in dict.fromkeys([best_sampler, *START_SAMPLERS]):
        for scheduler in dict.fromkeys([best_scheduler, *START_SCHEDULERS]):
            steps = suite.steps_for_nfe(name, nfe, scheduler, problem.kind)
            sigmas = suite.sigmas_for(name, problem.kind, steps, scheduler).double().tolist()
            table = BuiltinRows(suite.sampler_fn(name), host)(sigmas) if steps == nfe else None
            if table is None:  # not one call per step at this budget
                continue
            rows = torch.zeros(nfe, nfe + 1, dtype=torch.float64)
            for k, row in enumerate(table):
                rows[k, :len(row)] = torch.tensor(row, dtype=torch.float64)
            error = float((linear_rollout(denoise, x, sigmas, rows) - reference).pow(2).mean())
            found.append((error, sigmas, rows, f"{name} + {scheduler}"))
    _, sigmas, rows, label = min(found, key=lambda f: f[0])
    return sigmas, rows, label


class Family:
    """The fitted parameters: x_0's column (times s_0), the output columns (lower-triangular;
    cond and uncond apart for "split") and log s_1 .. log s_{N-1}."""

    def __init__(self, sigmas, rows, split_cfg=None):
        self.first = float(sigmas[0])
        self.steps = len(sigmas) - 1
        # x_0's column in units of 1 / s_0 (x_0 is noise of scale s_0, 80 on Karras): Adam's
        # step is about the learning rate whatever the gradient's scale
        self.x0 = (rows[:, :1] * self.first).clone().requires_grad_()
        outputs = rows[:, 1:]
        self.columns = ([(split_cfg * outputs).clone().requires_grad_(),
                         ((1 - split_cfg) * outputs).clone().requires_grad_()]
                        if split_cfg is not None else [outputs.clone().requires_grad_()])
        self.log_sigmas = torch.tensor([math.log(s) for s in sigmas[1:-1]], dtype=torch.float64,
                                       requires_grad=True)
        self.low = math.log(min(s for s in sigmas if s > 0)) - 1.0
        self.mask = torch.tril(torch.ones(self.steps, self.steps, dtype=torch.float64))

    def parameters(self):
        return [{"params": [self.x0, *self.columns], "lr": LEARNING_RATE["rows"]},
                {"params": [self.log_sigmas], "lr": LEARNING_RATE["timesteps"]}]

    def sigmas(self, flow):
        inner = list(torch.exp(self.log_sigmas))
        if flow:
            inner = [s.clamp(max=0.999) for s in inner]
        return [torch.tensor(self.first, dtype=torch.float64), *inner]

    def rollout(self, x0, denoise, parts, flow):
        sigmas, outputs, x = self.sigmas(flow), [], x0
        for k in range(self.steps):
            outputs.append(parts(x, sigmas[k]) if len(self.columns) == 2
                           else (denoise(x, sigmas[k]),))
            x = self.x0[k] / self.first * x0 + sum(column[k, m] * out[j]
                                      for m, out in enumerate(outputs)
                                      for j, column in enumerate(self.columns))
        return x

    @torch.no_grad()
    def project(self):
        """Keep the map causal and the timesteps decreasing within the model's range."""
        for column in self.columns:
            column.mul_(self.mask)
        self.log_sigmas.clamp_(min=self.low, max=math.log(self.first) - 1e-3)
        for j in range(1, len(self.log_sigmas)):
            self.log_sigmas[j] = torch.minimum(self.log_sigmas[j], self.log_sigmas[j - 1] - 1e-3)


def fit(problem, nfe, best, iterations, size=0, seed=0, split=False) -> dict:
    """One Adam fit of the family at ``nfe``: on the test noise itself (``size`` 0) or on
    ``size`` calibration noises of ``seed`` (a quarter choosing the iterate); its ratio to the
    best pair on the test noise."""
    denoise, parts = denoisers(problem)
    flow = problem.kind == "flow"
    x_test = problem.x_start.double().reshape(problem.x_start.shape[0], -1)
    ref_test = problem.reference.double().reshape(x_test.shape)
    if size:
        x = cal.calibration_noise(problem, size, seed).double()
        cut = (3 * size) // 4
        # each part's reference on that part alone: the digits network guides row i of a batch
        # towards digit i mod 10, in the reference as in the rollouts
        x_fit, x_choose = x[:cut], x[cut:]
        ref_fit, ref_choose = (reference_solution(problem.model, part, problem.kind, 100).double()
                               for part in (x_fit, x_choose))
    else:
        x_fit, ref_fit, x_choose, ref_choose = x_test, ref_test, x_test, ref_test
    sigmas, rows, start_label = start(problem, nfe, best["best_sampler"], best["best_scheduler"],
                                      denoise, x_fit, ref_fit)
    family = Family(sigmas, rows, problem.model.cfg if split else None)
    optimiser = torch.optim.Adam(family.parameters())

    def ratio(x0, reference):
        with torch.no_grad():
            error = (family.rollout(x0, denoise, parts, flow) - reference).pow(2).mean()
        return float(error.sqrt()) / best["best_rms"]

    start_ratio = ratio(x_test, ref_test)
    chosen = (math.inf, 0, start_ratio)  # (choosing error, iteration, test ratio)
    for iteration in range(iterations + 1):
        if iteration % CHECK_EVERY == 0 or iteration == iterations:
            choose = ratio(x_choose, ref_choose)
            if choose < chosen[0]:
                chosen = (choose, iteration, ratio(x_test, ref_test) if size else choose)
        if iteration == iterations:
            break
        optimiser.zero_grad()
        loss = (family.rollout(x_fit, denoise, parts, flow) - ref_fit).pow(2).mean()
        loss.backward()
        optimiser.step()
        family.project()
    return {"size": size, "seed": seed, "split": split, "start": start_label,
            "start_ratio": start_ratio, "ratio": chosen[2], "iteration": chosen[1],
            "evaluations": iterations * nfe * x_fit.shape[0]}


def point(problem, nfe, best, sizes, seeds, iterations, split) -> dict:
    fits = [fit(problem, nfe, best, iterations, size, seed, variant)
            for variant in ([False, True] if split else [False])
            for size in sizes for seed in (range(seeds) if size else [0])]
    return {"data": problem.name, "schedule": problem.kind, "nfe": nfe,
            "calibrated": best["ratio"], "calibrated_evaluations": best["cost"]["evaluations"],
            "best": best["best"], "fits": fits}


def column(p, size, split=False):
    """The point's ratio for ``size`` (0: in sample): the median over the seeds; None where the
    point has no such fit."""
    ratios = [f["ratio"] for f in p["fits"] if f["size"] == size and f["split"] == split]
    return statistics.median(ratios) if ratios else None


def columns(points):
    """(title, key) of every column the points have: in sample, then each size; split after."""
    sizes = sorted({f["size"] for p in points for f in p["fits"]}, key=lambda s: (s != 0, s))
    out = []
    for split in (False, True):
        if not any(f["split"] == split for p in points for f in p["fits"]):
            continue
        for size in sizes:
            where = "in sample" if size == 0 else f"{size} noises"
            out.append((f"{'cond/uncond apart, ' if split else ''}{where}", (size, split)))
    return out


def summary_lines(points) -> list[str]:
    """Per data set and over all: the geometric mean of LML Calibrate's ratio and of each
    gradient fit's (in brackets, the points above 1.02); also README's (bench.readme)."""
    groups = {data: [p for p in points if p["data"] == data]
              for data in dict.fromkeys(p["data"] for p in points)}
    if len(groups) > 1:
        groups["all"] = points
    titles = columns(points)
    lines = ["| data | points | LML Calibrate | " + " | ".join(
        f"gradient fit, {title}" for title, _ in titles) + " |",
        "|---|---|---|" + "---|" * len(titles)]
    for data, group in groups.items():
        cells = [f"{geometric_mean(p['calibrated'] for p in group):.3f} "
                 f"({sum(p['calibrated'] > 1.02 for p in group)})"]
        for _, (size, split) in titles:
            values = [v for v in (column(p, size, split) for p in group) if v is not None]
            cells.append(f"{geometric_mean(values):.3f} ({sum(v > 1.02 for v in values)})"
                         if values else "-")
        lines.append(f"| {data} | {len(group)} | " + " | ".join(cells) + " |")
    return lines


def markdown(data) -> str:
    meta, points = data["meta"], data["points"]
    titles = columns(points)
    lines = ["# The calibrated sampler's family, fitted by gradient descent", "",
             f"`{meta['command']}` ({meta['seconds']:.0f} s; {meta['iterations']} Adam "
             f"iterations; {meta['seeds']} calibration seeds out of sample). Ratios: RMS on the "
             "benchmark's test noise over the best pair's (docs/bench/calibrated.json); out of "
             "sample the median over the seeds. In the summary, geometric means over the points "
             "and in brackets the points above 1.02. \"In sample\" is fitted on the test noise "
             "itself: an oracle, not a sampler. bench/gradient_fit.py says what is fitted.", "",
             *summary_lines(points), "",
             "| point | LML Calibrate (evaluations) | start | "
             + " | ".join(f"{title} (evaluations)" for title, _ in titles) + " |",
             "|---|---|---|" + "---|" * len(titles)]
    for p in points:
        cells = []
        for _, (size, split) in titles:
            fits = [f for f in p["fits"] if f["size"] == size and f["split"] == split]
            cells.append(f"{column(p, size, split):.3f} ({fits[0]['evaluations']:,})"
                         if fits else "-")
        starts = ", ".join(dict.fromkeys(f["start"] for f in p["fits"] if f["size"] == 0))
        lines.append(f"| {p['data']}/{p['schedule']} {p['nfe']} NFE | {p['calibrated']:.3f} "
                     f"({p['calibrated_evaluations']:,}) | {starts} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="*", default=["mix2d", "mix64d"])
    parser.add_argument("--cfg", nargs="*", type=float, default=[],
                        help="the digits network at these cfg values too")
    parser.add_argument("--nfes", nargs="*", type=int, default=[4, 6, 10])
    parser.add_argument("--sizes", nargs="*", type=int, default=[0, 32, 512],
                        help="fitting noises (0: in sample, the test noise itself)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--split", action="store_true",
                        help="on the digits network also fit cond and uncond apart")
    add_page_arguments(parser, "gradient_fit")
    args = parser.parse_args(argv)
    out = prepare(args)
    if page_only(args, out, markdown):
        return None
    started = time.time()
    best = calibrated_points(out)
    points = []
    for problem in cal.benchmark_problems(args.data, args.cfg, lambda name: SAMPLES[name],
                                          args.ref_steps, log):
        digits = isinstance(problem.model, CFGDigitsModel)
        for nfe in args.nfes:
            t = time.time()
            points.append(point(problem, nfe, best[(problem.name, problem.kind, nfe)],
                                args.sizes, args.seeds, args.iterations, args.split and digits))
            log(f"{problem.name}/{problem.kind} {nfe} NFE ({time.time() - t:.0f} s): "
                f"calibrated {points[-1]['calibrated']:.3f}, " + ", ".join(
                    f"{title} {column(points[-1], *key):.3f}"
                    for title, key in columns([points[-1]])))
    meta = {"seconds": time.time() - started, "seeds": args.seeds,
            "nfes": args.nfes, "sizes": args.sizes, "iterations": args.iterations,
            "learning_rate": LEARNING_RATE, "check_every": CHECK_EVERY}
    return write_page(args, out, "bench.gradient_fit", argv, meta, points, markdown)


if __name__ == "__main__":
    main()
