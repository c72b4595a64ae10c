"""A built-in sampler's step rule as LML multistep coefficients, so that the LML fit can start
from the best built-in pair instead of only from its own bases (euler, ipndm, ipndm_v).

A deterministic sampler with one model call per step is linear in the model's outputs: the
state at its k-th call is x_k = alpha_k x_0 + sum_{m<k} beta_{k,m} D_m.  ``identified`` reads
those coefficients off a run of the black-box sampler on a probe model whose outputs are the
unit vectors (no model evaluation).  ``projected`` writes each step in the LML form

    x_{k+1} = x_k + (s_{k+1} - s_k) sum_j w_{k,j} d_{k-j},   d_m = (x_m - D_m) / s_m

by least squares step by step.  Adams-type samplers (deis, ipndm, lms, ...) are exactly of this
form; others (uni_pc's corrector, dpmpp_2m's exponential steps) are approximated, and the
field measures what the approximation actually does on the noise before it is used.
"""

from __future__ import annotations

import math

import torch


class ProbeModel:
    """The calibration's model with its call replaced: call k returns the unit vector e_{k+1}
    (D_k), and records the state and sigma it was given.  Every other attribute is the model's
    own (host samplers read ``model.inner_model...``)."""

    def __init__(self, model, outputs=None):
        self._model = model
        self.calls = []
        self.outputs = outputs  # in place of the unit vectors: these rows in turn

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, x, sigma, **_extra_args):
        out = torch.zeros_like(x)
        k = len(self.calls)
        self.calls.append((float(torch.as_tensor(sigma).reshape(-1)[0]),
                           x[0].to(torch.float64).clone()))
        if self.outputs is not None:
            out[:] = self.outputs[min(k, len(self.outputs) - 1)]
        elif k + 1 < x.shape[1]:
            out[:, k + 1] = 1.0
        return out


def linear_map(run, sigmas: list[float]):
    """(states at each model call, final sample) of ``run(probe, x)`` (a sampler run on
    ``sigmas`` with ``probe`` as its model) as coefficient vectors over (x_0, D_0 .. D_{N-1});
    None unless it calls the model exactly once at each of the schedule's nonzero sigmas,
    returns finite values and is linear (a run on random x_0 and outputs is what the
    coefficients predict)."""
    steps = len(sigmas) - 1
    x = torch.zeros(1, steps + 1, dtype=torch.float32)
    x[0, 0] = 1.0
    generator = torch.Generator().manual_seed(0)
    x_random = torch.randn(1, steps + 1, generator=generator)
    probes = [ProbeModel(None), ProbeModel(None, torch.randn(steps, steps + 1,
                                                            generator=generator))]
    try:
        final = run(probes[0], x)
        calls = probes[0].calls
        if len(calls) != steps or not torch.isfinite(final).all() or not all(
                math.isclose(s, want, rel_tol=1e-5) for (s, _), want in zip(calls, sigmas)):
            return None
        final_random = run(probes[1], x_random)
    except Exception:  # a sampler that cannot run on the probe: no map
        return None
    final = final[0].to(torch.float64)
    basis = torch.cat([x_random, probes[1].outputs]).to(torch.float64)  # x_0, D_0 .. D_{N-1}
    if not torch.allclose(final @ basis, final_random[0].to(torch.float64), rtol=1e-4,
                          atol=1e-4 * float(basis.abs().max())):
        return None
    return [state for _, state in calls], final


def identified(sampler, model, sigmas: list[float]):
    """``linear_map`` of the k-diffusion ``sampler`` on ``sigmas`` (its probe passes every
    other attribute to ``model``: host samplers read ``model.inner_model...``)."""
    def run(probe, x):
        probe._model = model
        return sampler(probe, x, torch.tensor(sigmas, dtype=torch.float32), extra_args={},
                       disable=True)
    return linear_map(run, sigmas)


def same_map(a, b, tolerance=1e-5) -> bool:
    """Whether two ``linear_map`` results are the same sampler (to float32 rounding)."""
    if a is None or b is None or len(a[0]) != len(b[0]):
        return False
    return all(torch.allclose(u, v, rtol=0, atol=tolerance * max(1.0, float(v.abs().max())))
               for u, v in zip([*a[0], a[1]], [*b[0], b[1]]))


def projected(states, final, sigmas: list[float], history: int) -> list[list[float]]:
    """The LML coefficients w_{k,.} (at most ``history`` per step, as the fit's slots) whose
    rollout follows ``states`` / ``final`` (``identified``) most closely, step by step: each
    step matches the built-in's next state from the LML rollout's own current one, with the
    noise coefficient weighted by sigma_0 (its scale in the sample)."""
    steps = len(sigmas) - 1
    weight = torch.ones(steps + 1, dtype=torch.float64)
    weight[0] = max(1.0, sigmas[0])
    x = states[0]
    directions, table = [], []
    for k in range(steps):
        denoised = torch.zeros(steps + 1, dtype=torch.float64)
        denoised[k + 1] = 1.0
        directions.insert(0, (x - denoised) / sigmas[k])
        target = states[k + 1] if k + 1 < steps else final
        basis = (sigmas[k + 1] - sigmas[k]) * torch.stack(directions[:min(k + 1, history)], 1)
        w = torch.linalg.lstsq(basis * weight[:, None], (target - x) * weight).solution
        table.append([float(v) for v in w])
        x = x + basis @ w
    return table


def sampler_coefficients(sampler, model, sigmas: list[float], history: int):
    """``projected(identified(...))``: the LML coefficient table of ``sampler`` on ``sigmas``,
    or None where it cannot be identified (more or fewer model calls, other sigmas)."""
    found = identified(sampler, model, list(sigmas))
    if found is None:
        return None
    table = projected(*found, list(sigmas), history)
    return table if all(math.isfinite(v) for row in table for v in row) else None


class BuiltinSteps:
    """``sampler``'s LML coefficient table as a function of the timesteps (the LML fit's
    ``start``): re-identified wherever the fit moves them, as the sampler itself would step
    there, and cached per schedule (the corrections' columns leave the timesteps alone)."""

    def __init__(self, sampler, model, history: int):
        self.sampler, self.model, self.history = sampler, model, history
        self.tables = {}

    def __call__(self, sigmas):
        key = tuple(float(s) for s in sigmas)
        if key not in self.tables:
            if len(self.tables) > 256:
                self.tables.clear()
            self.tables[key] = self.table(list(key))
        return self.tables[key]

    def table(self, sigmas: list[float]):
        return sampler_coefficients(self.sampler, self.model, sigmas, self.history)


class BuiltinRows(BuiltinSteps):
    """``sampler``'s exact linear map as a function of the timesteps (lml_core.linear_fit):
    row k is the state after step k + 1 (the last: the final sample) as its k + 2 coefficients
    of [x_0, D_0 .. D_k]; None where it is not identified there.  Cached as BuiltinSteps."""

    def __init__(self, sampler, model):
        super().__init__(sampler, model, history=0)

    def table(self, sigmas: list[float]):
        found = identified(self.sampler, self.model, sigmas)
        if found is None:
            return None
        return [[float(v) for v in row[:k + 2]]
                for k, row in enumerate([*found[0][1:], found[1]])]
