"""Running samplers against a reference solution: the loop shared by the benchmark and the study."""

from __future__ import annotations

import time

import torch

from lml_core import SAMPLERS

from .baselines import BASELINES, steps_for_nfe
from .common import initial_noise, mode_weight_error, reference_solution, rms, schedule, sliced_w2
from .exact import EXACT_DATASETS, MixtureModel

NFES = [5, 6, 8, 10, 15, 20, 50]  # the NFE budgets of every benchmark table
SCHEDULES = ("karras", "flow")
BASELINE_NAMES = tuple(BASELINES)  # ComfyUI's deterministic samplers, as written in baselines.py
WRAPPED = {"lml_euler": "euler", "lml_dpmpp_2m": "dpmpp_2m"}  # LML sampler -> the solver it wraps
NOISE_SEED = 2024  # the benchmark's start noise for every exact data set


class CountingModel:
    """Wraps a denoiser and counts its calls, so that NFE is measured, not assumed."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        return self.model(x, sigma, **extra_args)


def sampler_fn(name):
    """The sampler function for a name (a baseline or an LML sampler) or a function itself."""
    if callable(name):
        return name
    if name in BASELINES:
        return BASELINES[name]
    return SAMPLERS[name]


# Rows per chunk: ~3 MB of float32 state.  Every sampler and the reference treat samples
# independently, so a big batch is run in slices; on 2 cores that is 2-4x faster for the
# 4000 x 3072 set (the slices stay in cache and reuse freed memory instead of faulting in fresh
# pages for every temporary).
CHUNK_ELEMENTS = 3 * 2**18


def chunk_rows(x):
    return max(1, CHUNK_ELEMENTS // max(1, x[0].numel()))


def run_sampler(model, x_start, kind, name, nfe, options=None, flow=False):
    """Sample with ``name`` at an NFE budget; returns (x, measured NFE per sample)."""
    fn = sampler_fn(name)
    steps = steps_for_nfe(name, nfe)
    sigmas = schedule(kind, steps).to(torch.float32)
    outs, calls = [], set()
    for part in torch.split(x_start, chunk_rows(x_start)):
        counter = CountingModel(model)
        outs.append(fn(counter, part.to(torch.float32), sigmas, extra_args={}, disable=True,
                       flow=flow, **(options or {})))
        calls.add(counter.calls)
    if len(calls) != 1:
        raise RuntimeError(f"{name}: model calls differ between chunks: {sorted(calls)}")
    return torch.cat(outs), calls.pop()


def chunked_reference(model, x, kind, steps):
    return torch.cat([reference_solution(model, part, kind, steps)
                      for part in torch.split(x, chunk_rows(x))])


class Problem:
    """One (data set, schedule) pair: the start noise, the reference solution and the scorers."""

    def __init__(self, name, kind, model, noise, ref_steps=250, check_subset=256, log=print):
        self.name, self.kind, self.model = name, kind, model
        self.flow = kind == "flow"
        self.x_start = initial_noise(kind, noise)
        t0 = time.time()
        self.reference = chunked_reference(model, self.x_start, kind, ref_steps)
        # Convergence check on a subset: RK4 at half the steps against the full reference.
        sub = self.x_start[:check_subset]
        half = reference_solution(model, sub, kind, ref_steps // 2)
        self.ref_check = rms(half, self.reference[:check_subset])
        log(f"  reference {name}/{kind}: {ref_steps} RK4 steps ({4 * ref_steps + 1} NFE) in "
            f"{time.time() - t0:.1f}s; |ref({ref_steps // 2}) - ref({ref_steps})| = "
            f"{self.ref_check:.2e} (RK4: the {ref_steps}-step error is ~1/16 of that)")

    def score(self, x):
        return {"rms": rms(x, self.reference)}


def exact_problems(names, samples, ref_steps, seed, log=print):
    """(mixture, Problem) for each exact data set in ``names`` and each schedule; the start noise
    of data set ``name`` comes from a generator seeded with ``seed(name)``."""
    for name in names:
        mixture = EXACT_DATASETS[name]()
        for kind in SCHEDULES:
            noise = torch.randn(samples, mixture.dim, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(seed(name)))
            yield mixture, Problem(name, kind, MixtureModel(mixture, kind == "flow"), noise,
                                   ref_steps, log=log)


def evaluate(problem, samplers, nfes, extra_metrics=None, log=print):
    """Rows of {sampler, nfe_budget, nfe, rms, ...} for every sampler spec and NFE budget.
    ``samplers``: {label: (sampler name, options)}."""
    rows = []
    for label, (name, options) in samplers.items():
        t0 = time.time()
        for nfe in nfes:
            x, calls = run_sampler(problem.model, problem.x_start, problem.kind, name, nfe,
                                   options, problem.flow)
            if not torch.isfinite(x).all():
                raise FloatingPointError(f"{label} produced non-finite samples at NFE {nfe}")
            row = {"data": problem.name, "schedule": problem.kind, "sampler": label,
                   "nfe_budget": nfe, "nfe": calls, "rms": rms(x, problem.reference)}
            if extra_metrics is not None:
                row.update(extra_metrics(x))
            rows.append(row)
        log(f"    {label:<24s} {time.time() - t0:6.1f}s  " + " ".join(
            f"{r['rms']:.4f}" for r in rows[-len(nfes):]))
    return rows


__all__ = ["BASELINE_NAMES", "CountingModel", "NFES", "Problem", "SCHEDULES", "WRAPPED",
           "evaluate", "exact_problems", "run_sampler", "mode_weight_error", "sliced_w2"]
