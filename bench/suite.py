"""Running samplers against a reference: the loop shared by the benchmark, the study and the
rotation study.  Built-in samplers are the host's own functions (bench.field); LML samplers are
lml_core's; both get the same HostModel, schedule, noise and seed."""

from __future__ import annotations

import functools
import math
import time

import torch

from lml_core import SAMPLERS, STOCHASTIC_SAMPLERS, lml_wrap

from . import field
from .common import (
    SIGMA_START,
    initial_noise,
    median_error,
    mode_weight_error,
    reference_solution,
    rms,
    schedule,
    sliced_w2,
)
from .exact import EXACT_DATASETS, MixtureModel

NFES = [4, 5, 6, 8, 10, 15, 20, 30, 50]  # the deterministic tables' NFE budgets
STOCHASTIC_NFES = [6, 10, 20, 40]
SCHEDULES = ("karras", "flow")
BASELINE_NAMES = field.DETERMINISTIC  # the deterministic built-ins of the host
STOCHASTIC_BASELINES = field.STOCHASTIC
WRAPPED = {"lml_euler": "euler", "lml_dpmpp_2m": "dpmpp_2m",
           "lml_euler_ancestral": "euler_ancestral"}  # LML sampler -> the solver it wraps
LML_STOCHASTIC = STOCHASTIC_SAMPLERS
LML_DETERMINISTIC = tuple(name for name in SAMPLERS if name not in STOCHASTIC_SAMPLERS)
NOISE_SEED = 2024  # the benchmark's start noise for every exact data set


WRAP_PREFIX = "lml_wrap("  # "lml_wrap(ipndm_v)": lml_core.lml_wrap around a host sampler


def wrapped_base(name):
    """The sampler inside "lml_wrap(<base>)", else None."""
    if isinstance(name, str) and name.startswith(WRAP_PREFIX) and name.endswith(")"):
        return name[len(WRAP_PREFIX):-1]
    return None


def sampler_fn(name):
    """The function for a name (an LML sampler or a host sampler), or a function itself."""
    if callable(name):
        return name
    if wrapped_base(name):
        return lml_wrap(sampler_fn(wrapped_base(name)))
    if name in SAMPLERS:
        return SAMPLERS[name]
    return field.host_function(name)


def prepared(name, options=None):
    """(function, keyword options of the call): the options of a wrapped sampler are the
    wrapper's LM settings, given when it is built."""
    if wrapped_base(name):
        return lml_wrap(sampler_fn(wrapped_base(name)), **(options or {})), {}
    return sampler_fn(name), dict(options or {})


def sigmas_for(name, kind: str, steps: int, scheduler=None) -> torch.Tensor:
    """The schedule a user's KSampler gives ``name`` at ``steps`` steps (float32): the problem's
    fixed schedule (``scheduler`` None: Karras 0.002-80 or flow shift 3), or the host's
    ``scheduler`` on the problem's model_sampling."""
    name = wrapped_base(name) or name
    if scheduler is not None:
        base = name if isinstance(name, str) else ""
        return field.host_sigmas(base, scheduler, kind == "flow", steps).to(torch.float32)
    if isinstance(name, str) and field.discards_penultimate(name):
        sigmas = schedule(kind, steps + 1)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas = schedule(kind, steps)
    return sigmas.to(torch.float32)


def _gaussian_denoiser(x, sigma, model_options=None, **_):
    """D(x, sigma) of N(0, I) data, with the post-CFG hooks applied as ComfyUI's cfg_function
    does (cond = uncond): a cheap model for counting calls."""
    out = x / (1 + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2)
    for fn in (model_options or {}).get("sampler_post_cfg_function", []):
        out = fn({"denoised": out, "cond_denoised": out, "uncond_denoised": out, "input": x,
                  "sigma": sigma, "cond_scale": 1.0, "model_options": model_options})
    return out


def _zeros(sigmas):
    return len(sigmas), tuple(i for i, s in enumerate(sigmas.tolist()) if s == 0)


@functools.cache
def nfe_of(name, steps: int, scheduler=None, kind="karras") -> int:
    """Model calls ``name`` makes at ``steps`` steps of a schedule, counted on a tiny problem.
    A host scheduler's sigmas with the fixed schedule's length and zeros get its count: the
    samplers branch on the step index and on sigma == 0, not on the values (every run counts
    its calls again, and a pair over its budget is reported)."""
    sigmas = sigmas_for(name, kind, steps, scheduler)
    if scheduler is not None and _zeros(sigmas) == _zeros(sigmas_for(name, kind, steps)):
        return nfe_of(name, steps)
    model = field.HostModel(_gaussian_denoiser, flow=kind == "flow")
    x = torch.randn(1, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sampler_fn(name)(model, x * sigmas[0], sigmas, extra_args={"seed": 0}, disable=True)
    return model.calls


def steps_for_nfe(name, nfe: int, scheduler=None, kind="karras") -> int:
    """The most steps whose model calls fit the budget ``nfe`` (at least 1 step)."""
    steps = nfe
    while steps > 1 and nfe_of(name, steps, scheduler, kind) > nfe:
        steps -= 1
    return steps


# Rows per chunk: ~3 MB of float32 state.  Every sampler and the reference treat samples
# independently, so a big batch is run in slices; on 2 cores that is 2-4x faster for the
# 4000 x 3072 set (the slices stay in cache and reuse freed memory).
CHUNK_ELEMENTS = 3 * 2**18


def chunk_rows(x):
    return max(1, CHUNK_ELEMENTS // max(1, x[0].numel()))


@torch.no_grad()
def run_sampler(model, x_start, kind, name, nfe, options=None, seed=0, scheduler=None):
    """Sample with ``name`` at an NFE budget; returns (x, measured NFE per sample).  Each slice
    gets its own noise seed (``seed`` and the slice index), as separate prompts would.
    ``x_start`` is the noise at the fixed schedule's first sigma; a host ``scheduler`` starting
    elsewhere (ddim_uniform) gets the noise at its own first sigma, as KSampler scales an empty
    latent (model_sampling.noise_scaling without max_denoise's sqrt(1 + sigma^2), which would
    move every row off the reference's starting point)."""
    fn, options = prepared(name, options)
    sigmas = sigmas_for(name, kind, steps_for_nfe(name, nfe, scheduler, kind), scheduler)
    if scheduler is not None:
        x_start = x_start * (float(sigmas[0]) / SIGMA_START[kind])
    outs, calls = [], set()
    for index, part in enumerate(torch.split(x_start, chunk_rows(x_start))):
        host = field.HostModel(model, flow=kind == "flow")
        outs.append(fn(host, part.to(torch.float32), sigmas.clone(),  # uni_pc edits sigmas
                       extra_args={"seed": seed * 10007 + index}, disable=True, **options))
        calls.add(host.calls)
    if len(calls) != 1:
        raise RuntimeError(f"{name}: model calls differ between slices: {sorted(calls)}")
    return torch.cat(outs), calls.pop()


def chunked_reference(model, x, kind, steps):
    return torch.cat([reference_solution(model, part, kind, steps)
                      for part in torch.split(x, chunk_rows(x))])


class Problem:
    """One (data set, schedule) pair: the start noise, the reference ODE solution, and the
    distribution the stochastic samplers are scored against (``truth``, with ``floor``: the
    metric between two independent sets of it)."""

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
        self.truth, self.floor, self.distribution_metrics = None, None, None
        log(f"  reference {name}/{kind}: {ref_steps} RK4 steps ({4 * ref_steps + 1} NFE) in "
            f"{time.time() - t0:.1f}s; |ref({ref_steps // 2}) - ref({ref_steps})| = "
            f"{self.ref_check:.2e} (RK4: the {ref_steps}-step error is ~1/16 of that)")


def exact_problems(names, samples, ref_steps, seed, log=print):
    """(mixture, Problem) for each exact data set in ``names`` and each schedule; the start noise
    of data set ``name`` comes from a generator seeded with ``seed(name)``.  ``samples``: a count,
    or a function of the data set's name.  Stochastic samplers are scored against fresh true
    samples of the mixture."""
    for name in names:
        mixture = EXACT_DATASETS[name]()
        n = samples(name) if callable(samples) else samples
        true = mixture.sample(n, torch.Generator().manual_seed(11))[0]
        true2, labels2 = mixture.sample(n, torch.Generator().manual_seed(12))
        floor = {"sw2": sliced_w2(true2, true),
                 "mode_tv": mode_weight_error(labels2, mixture.weights)}

        def metrics(x, mixture=mixture, true=true):
            x = x.reshape(x.shape[0], -1)
            labels = mixture.responsibilities(x, 0.01).argmax(1)
            return {"sw2": sliced_w2(x, true),
                    "mode_tv": mode_weight_error(labels, mixture.weights)}

        for kind in SCHEDULES:
            noise = torch.randn(n, mixture.dim, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(seed(name)))
            problem = Problem(name, kind, MixtureModel(mixture, kind == "flow"), noise,
                              ref_steps, log=log)
            problem.truth, problem.floor, problem.distribution_metrics = true, floor, metrics
            yield mixture, problem


def point_row(problem, label, nfe, calls, scheduler=None):
    """``scheduler``: None for the problem's fixed schedule, else the host scheduler's name."""
    return {"data": problem.name, "schedule": problem.kind, "sampler": label,
            "scheduler": scheduler, "nfe_budget": nfe, "nfe": calls}


def scored_row(problem, label, nfe, calls, x, scheduler=None):
    """A deterministic sampler's row for its samples ``x``: point_row, its RMS and the median
    per-sample error against the problem's reference."""
    return {**point_row(problem, label, nfe, calls, scheduler), "rms": rms(x, problem.reference),
            "median": median_error(x, problem.reference)}


def evaluate(problem, samplers, nfes, extra_metrics=None, log=print, scheduler=None):
    """Deterministic rows {sampler, nfe_budget, nfe, rms, median, ...} for every sampler spec and
    NFE budget; ``median`` is the median over samples of the per-sample RMS error (at high NFE
    a few samples that flip mode dominate ``rms``).  ``samplers``: {label: (name, options)};
    ``scheduler``: a host scheduler for all of them (None: the problem's fixed schedule)."""
    rows = []
    for label, (name, options) in samplers.items():
        t0 = time.time()
        for nfe in nfes:
            x, calls = run_sampler(problem.model, problem.x_start, problem.kind, name, nfe,
                                   options, scheduler=scheduler)
            if not torch.isfinite(x).all():
                raise FloatingPointError(f"{label} produced non-finite samples at NFE {nfe}")
            row = scored_row(problem, label, nfe, calls, x, scheduler)
            if extra_metrics is not None:
                row.update(extra_metrics(x))
            rows.append(row)
        log(f"    {label:<28s} {time.time() - t0:6.1f}s  " + " ".join(
            f"{r['rms']:.4f}" for r in rows[-len(nfes):]))
    return rows


def evaluate_stochastic(problem, samplers, nfes, seeds, log=print, scheduler=None):
    """Stochastic rows: per sampler and NFE budget, the distribution metrics (median over
    ``seeds`` of the sampler's noise, and their spread) against ``problem.truth``.  A
    non-finite sample is counted and left out of the metrics."""
    rows = []
    for label, (name, options) in samplers.items():
        t0 = time.time()
        for nfe in nfes:
            per_seed, calls, bad = [], None, 0
            for seed in seeds:
                x, calls = run_sampler(problem.model, problem.x_start, problem.kind, name, nfe,
                                       options, seed=seed, scheduler=scheduler)
                finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
                bad += int((~finite).sum())
                per_seed.append(problem.distribution_metrics(x[finite]))
            row = {**point_row(problem, label, nfe, calls, scheduler), "seeds": len(seeds),
                   "non_finite": bad}
            for metric in per_seed[0]:
                values = sorted(m[metric] for m in per_seed)
                row[metric] = values[len(values) // 2] if len(values) % 2 else (
                    0.5 * (values[len(values) // 2 - 1] + values[len(values) // 2]))
                row[f"{metric}_min"], row[f"{metric}_max"] = values[0], values[-1]
            row["sw2_floor"] = problem.floor["sw2"]
            rows.append(row)
        log(f"    {label:<28s} {time.time() - t0:6.1f}s  sw2 " + " ".join(
            f"{r['sw2']:.4f}" for r in rows[-len(nfes):]))
    return rows


def geometric_mean(values):
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


__all__ = ["BASELINE_NAMES", "NFES", "Problem", "SCHEDULES", "STOCHASTIC_NFES", "WRAPPED",
           "evaluate", "evaluate_stochastic", "exact_problems", "run_sampler", "sampler_fn",
           "steps_for_nfe"]
