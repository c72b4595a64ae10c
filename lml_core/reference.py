"""The converged solution a calibration is fitted to: the model as a counted, chunked
``denoise(x, sigma)`` (``Evaluator``) and the reference trajectory of some noises (``Reference``:
classic RK4 in sigma on a grid uniform in log-SNR, then the denoising step every sampler's last
step takes)."""

from __future__ import annotations

import math

import torch

from .adaptive import half_log_snr
from .sampling import model_sampling_of, to_d


def sigma_of(t: float, flow: bool) -> float:
    """Inverse of half_log_snr."""
    return 1.0 / (1.0 + math.exp(t)) if flow else math.exp(-t)


class Evaluator:
    """The model as ``denoise(x, sigma)`` in the working dtype, in row chunks, counting calls
    (batched forward calls and per-row evaluations) and reporting them to ``on_call``."""

    def __init__(self, model, extra_args, dtype, batch_size=None, on_call=None):
        self.model, self.extra_args, self.dtype = model, extra_args or {}, dtype
        self.batch_size, self.on_call = batch_size, on_call
        self.calls = 0
        self.rows = 0

    def __call__(self, x, sigma: float):
        parts = [x] if not self.batch_size else torch.split(x, self.batch_size)
        outs = []
        for part in parts:
            out = self.model(part, sigma * part.new_ones([part.shape[0]]),
                             **self.extra_args).to(self.dtype)
            self.calls += 1
            self.rows += part.shape[0]
            if self.on_call is not None:
                self.on_call(self)
            outs.append(out)
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"calibrate: the model returned NaN or inf at sigma "
                                     f"{sigma:.4g}")
        return out


def reference_grid(sigma_start: float, floor: float, steps: int, flow: bool) -> list[float]:
    """Sigmas uniform in log-SNR from ``sigma_start`` to ``floor`` (a flow start at sigma ~1,
    where log-SNR is infinite, first takes one step down to 1 - 1e-3: the final sample moves
    by ~1e-7 RMS against four steps there, on the digits network and mix64d)."""
    lead = []
    hi = sigma_start
    if flow and sigma_start > 1 - 1e-3:
        hi = 1 - 1e-3
        lead = [sigma_start]
    t0, t1 = half_log_snr(hi, flow), half_log_snr(floor, flow)
    return lead + [sigma_of(t0 + (t1 - t0) * k / steps, flow) for k in range(steps + 1)]


class Reference:
    """The converged trajectory of some noises: classic RK4 of dx/dsigma = (x - D) / sigma over
    ``grid``, then the denoising step D(x, grid[-1]) every sampler's last step takes.  Keeps
    the states and slopes at the grid's nodes, so ``at(sigma)`` is the trajectory anywhere on
    it (cubic Hermite, fourth order like the RK4 itself)."""

    def __init__(self, denoise, x, grid: list[float]):
        self.grid = list(grid)
        self.states, self.slopes = [], []
        for s0, s1 in zip(grid[:-1], grid[1:]):
            h = s1 - s0
            k1 = to_d(x, s0, denoise(x, s0))
            k2 = to_d(x + 0.5 * h * k1, s0 + 0.5 * h, denoise(x + 0.5 * h * k1, s0 + 0.5 * h))
            k3 = to_d(x + 0.5 * h * k2, s0 + 0.5 * h, denoise(x + 0.5 * h * k2, s0 + 0.5 * h))
            k4 = to_d(x + h * k3, s1, denoise(x + h * k3, s1))
            self.states.append(x)
            self.slopes.append(k1)
            x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        self.final = denoise(x, grid[-1])
        self.states.append(x)
        self.slopes.append(to_d(x, grid[-1], self.final))
        self.scale = float(self.final.std())  # the data's scale, for the state weights
        self.weights = None  # per-sample weights of the fit (robust_weights), or None

    def subset(self, index, own_scale=False) -> Reference:
        """The same trajectory for the rows ``index`` (a slice or index tensor) of its noise:
        one reference serves the fitting, selection and test parts and any row subset.
        ``own_scale``: the data scale from these rows alone (so that the other rows, test
        noise among them, do not weigh the fit); else the whole reference's."""
        part = object.__new__(Reference)
        part.grid = self.grid
        part.states = [state[index] for state in self.states]
        part.slopes = [slope[index] for slope in self.slopes]
        part.final = self.final[index]
        part.scale = float(part.final.std()) if own_scale and part.final.shape[0] else self.scale
        part.weights = None if self.weights is None else self.weights[index]
        return part

    def weigh(self, rows):
        """[B, ...] rows times the per-sample weights."""
        if self.weights is None:
            return rows
        return rows * self.weights.reshape(-1, *[1] * (rows.ndim - 1)).to(rows.dtype)

    def at(self, sigma: float):
        grid = self.grid
        k = next((k for k in range(len(grid) - 1) if grid[k + 1] <= sigma), len(grid) - 2)
        h = grid[k + 1] - grid[k]
        u = min(max((sigma - grid[k]) / h, 0.0), 1.0)
        h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
        h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
        return (h00 * self.states[k] + (h10 * h) * self.slopes[k] + h01 * self.states[k + 1]
                + (h11 * h) * self.slopes[k + 1])


def reference_floor(model, schedules, requested) -> float:
    """Where the reference stops before its denoising step: the model's sigma_min (or the
    lowest last nonzero sigma of the schedules, if lower or unknown), never above it."""
    lowest = min(sigmas[-2] for sigmas in schedules)
    if requested is None:
        sigma_min = getattr(model_sampling_of(model), "sigma_min", None)
        requested = min(lowest, float(sigma_min)) if sigma_min is not None else lowest
    return min(float(requested), lowest)
