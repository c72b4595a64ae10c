"""The converged solution a calibration is fitted to: the model as a counted, chunked
``denoise(x, sigma)`` (``Evaluator``) and the reference trajectory of some noises (``Reference``:
a fourth-order exponential multistep method in data prediction on a grid uniform in log-SNR,
one model call a step, then the denoising step every sampler's last step takes)."""

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
    where log-SNR is -inf, first takes one step down to 1 - 1e-3)."""
    lead = []
    hi = sigma_start
    if flow and sigma_start > 1 - 1e-3:
        hi = 1 - 1e-3
        lead = [sigma_start]
    t0, t1 = half_log_snr(hi, flow), half_log_snr(floor, flow)
    return lead + [sigma_of(t0 + (t1 - t0) * k / steps, flow) for k in range(steps + 1)]


# Gauss-Legendre nodes and weights on [-1, 1] (12 points: exact for the polynomial part, and
# for e^lambda times it to rounding over a step of the reference's size).
_GAUSS_X = (-0.9815606342467192, -0.9041172563704749, -0.7699026741943047, -0.5873179542866175,
            -0.3678314989981802, -0.1252334085114689, 0.1252334085114689, 0.3678314989981802,
            0.5873179542866175, 0.7699026741943047, 0.9041172563704749, 0.9815606342467192)
_GAUSS_W = (0.0471753363865118, 0.1069393259953184, 0.1600783285433462, 0.2031674267230659,
            0.2334925365383548, 0.2491470458134028, 0.2491470458134028, 0.2334925365383548,
            0.2031674267230659, 0.1600783285433462, 0.1069393259953184, 0.0471753363865118)


def exp_weights(nodes: list[float], a: float, b: float) -> list[float]:
    """w_i = integral from a to b of e^lambda L_i(lambda), L_i the Lagrange basis polynomial of
    ``nodes`` (log-SNRs): the weights of the denoised values at those nodes in one step."""
    mid, half = (a + b) / 2, (b - a) / 2
    out = []
    for i, li in enumerate(nodes):
        total = 0.0
        for g, w in zip(_GAUSS_X, _GAUSS_W):
            lam = mid + half * g
            basis = math.prod((lam - lj) / (li - lj) for j, lj in enumerate(nodes) if j != i)
            total += w * math.exp(lam) * basis
        out.append(total * half)
    return out


class Reference:
    """The converged trajectory of some noises over ``grid`` (a flow grid if ``flow``), then the
    denoising step D(x, grid[-1]) every sampler's last step takes.

    With lambda = log(alpha / sigma) the probability-flow ODE is exactly x_t / sigma_t =
    x_s / sigma_s + integral of e^lambda D dlambda (DPM-Solver++'s form: the linear part is
    solved, only the denoiser is approximated).  Each step predicts with the polynomial through
    the last ``ORDER`` denoised values (Adams-Bashforth), calls the model at the prediction, and
    corrects with the polynomial through that value and those ``ORDER`` (Adams-Moulton); the
    call serves the next step, so a step costs one model call (PEC, as UniPC's corrector).
    Against a 256-step classic RK4 solution, 64 steps of this (half the calls of 32 RK4 steps
    in sigma) are 7-43x closer on the digits network and from 1.3x closer to 3.4x further on
    the exact mixtures (mix64d Karras, whose RMS one noise near a mode boundary carries); at
    most 1.4% of the best pair's error at 10 NFE on any benchmark problem, where RK4 was up to
    12% (digits cfg 6 flow) (docs/bench/reference.md).  Keeps the states and slopes at every
    other node of the grid, so ``at(sigma)`` is the trajectory anywhere on it (cubic
    Hermite)."""

    ORDER = 4
    KEEP_EVERY = 2  # nodes kept for at(): every other one, and the last

    @classmethod
    def kept_nodes(cls, count: int) -> list[int]:
        """The indices of the ``count`` grid nodes whose states and slopes are kept: at(sigma)
        between every other node, 2 x 0.17 in log-SNR at 64 steps from sigma 80 to 0.002, is
        as close to the trajectory as the old 32-step RK4 grid's 0.33, and holds 33 states
        and slopes, not 65 (at SDXL size, 32 noises: 0.55 GB)."""
        return sorted({*range(0, count, cls.KEEP_EVERY), count - 1})

    def __init__(self, denoise, x, grid: list[float], flow: bool):
        lam = [half_log_snr(s, flow) for s in grid]
        kept = self.kept_nodes(len(grid))
        self.grid = [grid[n] for n in kept]
        self.states, self.slopes = [], []
        history = []  # (lambda, D) of the last nodes, newest last
        denoised = denoise(x, grid[0])
        for n in range(len(grid) - 1):
            s0, s1 = grid[n], grid[n + 1]
            if n in kept:
                self.states.append(x)
                self.slopes.append(to_d(x, s0, denoised))
            if math.isinf(lam[n]):
                # sigma 1 of a flow: x_1 = alpha_1 D0 + sigma_1 x_0, alpha = 1 - sigma
                # (first-order step; the one model call there has no log-SNR to serve as a
                # polynomial node)
                predicted = (1.0 - s1) * denoised + s1 * x
            else:
                history = (history + [(lam[n], denoised)])[-self.ORDER:]
                predicted = self.advance(x, s0, s1, lam[n], lam[n + 1], history)
            denoised = denoise(predicted, s1)
            if n + 1 < len(grid) - 1 and history:
                x = self.advance(x, s0, s1, lam[n], lam[n + 1],
                                 history + [(lam[n + 1], denoised)])
            else:  # the last step: its model call is the final denoising step's
                x = predicted
        self.final = denoised
        self.states.append(x)
        self.slopes.append(to_d(x, grid[-1], self.final))
        self.scale = float(self.final.std())  # the data's scale, for the state weights
        self.weights = None  # per-sample weights of the fit (robust_weights), or None

    @staticmethod
    def advance(x, s0, s1, lam0, lam1, nodes):
        """x at sigma s1 from x at s0 over [lam0, lam1], D by the polynomial through nodes."""
        weights = exp_weights([lam for lam, _ in nodes], lam0, lam1)
        out = (s1 / s0) * x
        for w, (_, d) in zip(weights, nodes):
            out = out + (s1 * w) * d
        return out

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
