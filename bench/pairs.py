"""The field is pairs: every KSampler asks for a sampler and a scheduler, so "the best built-in"
at a point is the best (sampler, scheduler) pair.

A pair runs with the sigmas KSampler would give it (bench.field.host_sigmas: the host's
calculate_sigmas on the problem's real model_sampling, with the discard-penultimate rule), at
the same model calls as every row (suite.steps_for_nfe, counted on the pair's own sigmas).
All pairs on all samples would cost ~9x the fixed-schedule rows, so the choice has two stages:

1. selection: every pair on the first ``subset`` samples of the problem's noise (for the
   stochastic pairs one noise seed);
2. final: the ``finalists`` best pairs of each NFE on all the samples (every seed), side by side
   with the fixed-schedule rows and the LML samplers; the lowest of them is the best pair.
   Where the subset is all the samples (deterministic pairs), the selection's own runs are
   the final rows: nothing runs twice.

A scheduler the host cannot give a usable schedule for, or a pair that raises or returns
non-finite samples, is recorded with its reason, never dropped silently.
"""

from __future__ import annotations

import contextlib
import time

import torch

from . import field
from .common import rms
from .suite import (
    evaluate,
    evaluate_stochastic,
    run_sampler,
    scored_row,
    sigmas_for,
    steps_for_nfe,
)

FINALISTS = 3  # pairs per NFE taken from the selection to the full samples
TOP = 5  # pairs per point kept in results.json's selection record


def _check(scheduler, flow, n):
    """Why the host's ``scheduler`` gives no usable ``n``-step schedule, or None."""
    try:
        sigmas = field.host_sigmas("euler", scheduler, flow, n)
    except Exception as error:  # a newer host's scheduler may need more than model_sampling
        return f"{type(error).__name__}: {error}"
    if not torch.isfinite(sigmas).all() or float(sigmas[-1]) != 0.0:
        return f"{n} steps give {[round(float(s), 4) for s in sigmas]}"
    return None


def placements(flow: bool, steps=range(1, 51)) -> dict[str, str]:
    """Each host scheduler on a problem's model_sampling at the step counts ``steps``: "run",
    "run, not at <n> steps: <why>" (kl_optimal divides by steps - 1), or "not run: <why>"."""
    out = {}
    for scheduler in field.scheduler_names():
        bad = {n: why for n in steps if (why := _check(scheduler, flow, n))}
        if not bad:
            out[scheduler] = "run"
        elif len(bad) == len(steps):
            out[scheduler] = f"not run: {next(iter(bad.values()))}"
        else:
            counts = ", ".join(str(n) for n in bad)
            plural = "s" if len(bad) > 1 else ""
            out[scheduler] = f"run, not at {counts} step{plural}: {next(iter(bad.values()))}"
    return out


def runnable(flow: bool, nfes) -> list[str]:
    """The schedulers that give a usable schedule at some step count up to the largest budget
    (a pair at a step count its scheduler cannot do fails and is reported)."""
    placed = placements(flow, range(1, max(nfes) + 1))
    return [name for name, how in placed.items() if not how.startswith("not run")]


def pair_schedules(problem, nfe: int, sampler: str = "euler") -> dict[str, torch.Tensor]:
    """{scheduler: sigmas} for a one-call-per-step ``sampler`` at ``nfe`` model calls on the
    problem's model_sampling: what calibrate will start from (float64).  A scheduler without an
    ``nfe``-step schedule gives the most steps below (ddim_uniform asked for 6 steps gives 7)."""
    out = {}
    for scheduler in runnable(problem.flow, [nfe]):
        steps = steps_for_nfe(sampler, nfe, scheduler, problem.kind)
        out[scheduler] = sigmas_for(sampler, problem.kind, steps, scheduler).to(torch.float64)
    return out


def _score(problem, x, stochastic, subset):
    """The selection score of a subset's samples, or the reason it has none."""
    if not torch.isfinite(x).all():
        return None, "non-finite samples"
    if stochastic:
        return problem.distribution_metrics(x)["sw2"], None
    return rms(x, problem.reference[:subset]), None


@contextlib.contextmanager
def one_thread():
    """The subsets' tensors are small: a second OpenMP thread only spins, and on busy cores that
    made the selection 5x slower (mix64d, 250 samples: 24.6 s wall with 2 threads, 4.6 s with
    1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@one_thread()
def select(problem, samplers, schedulers, nfes, subset, stochastic=False, rows=None):
    """Every pair on the first ``subset`` samples.  Returns ({nfe: [(score, sampler,
    scheduler)] ascending}, failures [{sampler, scheduler, nfe, why}]).  ``rows``: a dict
    that gets each deterministic pair's final row {(sampler, scheduler, nfe): row}, as
    suite.evaluate writes it (only where the subset is every sample)."""
    x_start = problem.x_start[:subset]
    whole = rows is not None and not stochastic and len(x_start) == len(problem.x_start)
    ranking, failures = {nfe: [] for nfe in nfes}, []
    for sampler in samplers:
        for scheduler in schedulers:
            for nfe in nfes:
                try:
                    x, calls = run_sampler(problem.model, x_start, problem.kind, sampler, nfe,
                                           scheduler=scheduler)
                    score, why = _score(problem, x, stochastic, subset)
                except Exception as error:  # a pair the host cannot run is reported
                    score, why = None, f"{type(error).__name__}: {error}"
                if score is not None and calls > nfe:
                    score, why = None, f"{calls} model calls at the fewest steps"
                if score is None:
                    failures.append({"sampler": sampler, "scheduler": scheduler, "nfe": nfe,
                                     "why": why})
                else:
                    ranking[nfe].append((score, sampler, scheduler))
                    if whole:
                        rows[(sampler, scheduler, nfe)] = scored_row(problem, sampler, nfe,
                                                                     calls, x, scheduler)
    return {nfe: sorted(found) for nfe, found in ranking.items()}, failures


def finalist_nfes(ranking, finalists=FINALISTS):
    """{(sampler, scheduler): [nfe, ...]}: the NFEs at which each pair is a finalist."""
    out = {}
    for nfe, found in ranking.items():
        for _, sampler, scheduler in found[:finalists]:
            out.setdefault((sampler, scheduler), []).append(nfe)
    return out


def best_pairs(problem, samplers, nfes, subset, stochastic=False, seeds=(0,),
               finalists=FINALISTS, log=print):
    """The two stages for one problem.  Returns (final rows with a "scheduler" key, selection
    records per NFE, failures)."""
    t0 = time.time()
    schedulers = runnable(problem.flow, nfes)
    kept = {}  # the selection's rows, where it ran every sample
    ranking, failures = select(problem, samplers, schedulers, nfes, subset, stochastic, kept)
    rows = []
    for (sampler, scheduler), at in finalist_nfes(ranking, finalists).items():
        if kept:
            rows += [kept[(sampler, scheduler, nfe)] for nfe in sorted(at)]
            continue
        spec = {sampler: (sampler, {})}
        try:
            if stochastic:
                rows += evaluate_stochastic(problem, spec, sorted(at), seeds, log=lambda _: None,
                                            scheduler=scheduler)
            else:
                rows += evaluate(problem, spec, sorted(at), log=lambda _: None,
                                 scheduler=scheduler)
        except Exception as error:  # finite on the subset, not on every sample
            failures.append({"sampler": sampler, "scheduler": scheduler, "nfe": sorted(at),
                             "why": f"all samples: {type(error).__name__}: {error}"})
    selection = [{"data": problem.name, "schedule": problem.kind, "nfe_budget": nfe,
                  "metric": "sw2" if stochastic else "rms", "samples": min(subset, len(
                      problem.x_start)), "seeds": 1, "pairs": len(found),
                  "top": [[sampler, scheduler, score] for score, sampler, scheduler
                          in found[:TOP]]} for nfe, found in ranking.items()]
    for failure in failures:
        failure.update(data=problem.name, schedule=problem.kind)
    log(f"    pairs {len(samplers)} x {len(schedulers)} on {min(subset, len(problem.x_start))} "
        f"samples, {finalists} finalists per NFE on all: {time.time() - t0:.1f}s, "
        f"{len(failures)} failed")
    return rows, selection, failures
