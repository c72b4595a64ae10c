"""Schedules, the reference ODE solver and the metrics shared by the benchmark suites."""

from __future__ import annotations

import math

import torch

KARRAS = dict(sigma_min=0.002, sigma_max=80.0, rho=7.0)
FLOW_SHIFT = 3.0
# Where the reference integration stops before its final denoising step D(x, sigma_floor):
# Karras schedules end at sigma_min (so every sampler's infinite-step limit is exactly the
# reference); flow schedules end at a last sigma of 3 / (n + 2), whose limit is the ODE at 0.
FLOW_FLOOR = 1e-4
DIGITS_NOISE_SEED = 77  # the digits network's test noise: one draw every benchmark shares


def digits_noise(samples, draw=0):
    """``samples`` start noises of the digits network's 64-value latent, the benchmark's test
    noise (``draw`` > 0: another draw of it, from seed DIGITS_NOISE_SEED + draw)."""
    return torch.randn(samples, 64, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(DIGITS_NOISE_SEED + draw))


def karras_sigmas(n, sigma_min=KARRAS["sigma_min"], sigma_max=KARRAS["sigma_max"],
                  rho=KARRAS["rho"]):
    """ComfyUI's ``karras`` scheduler: n sigmas from sigma_max to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)])


def flow_sigmas(n, shift=FLOW_SHIFT):
    """A flow-matching schedule (SD3's time shift): t uniform 1 -> 0,
    s = shift t / (1 + (shift - 1) t)."""
    t = torch.linspace(1, 0, n + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def schedule(kind: str, n: int) -> torch.Tensor:
    return karras_sigmas(n) if kind == "karras" else flow_sigmas(n)


def rk4(f, x, grid):
    """Classic RK4 for dx/du = f(x, u) over the points of ``grid``."""
    for u0, u1 in zip(grid[:-1], grid[1:]):
        h = u1 - u0
        k1 = f(x, u0)
        k2 = f(x + 0.5 * h * k1, u0 + 0.5 * h)
        k3 = f(x + 0.5 * h * k2, u0 + 0.5 * h)
        k4 = f(x + h * k3, u1)
        x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@torch.no_grad()
def reference_solution(model, x, kind: str, steps: int = 250):
    """The probability-flow ODE dx/dsigma = (x - D) / sigma solved by classic RK4 (4 NFE per
    step) uniformly in log-SNR, then the final denoising step D(x, sigma_floor) that every
    sampler's last step takes.

    VE: u = log(sigma), dx/du = x - D(x, e^u), from sigma_max to sigma_min.
    Flow: x = (1 - s) x0 + s n is the VE problem x~ = x / (1 - s), sigma~ = s / (1 - s), so we
    integrate x~ in u = log(sigma~) the same way, from s = 1 - 1e-3 (sigma~ = 999) to the floor;
    the first stretch s = 1 -> 1 - 1e-3, where sigma~ is infinite, takes 4 RK4 steps in s.
    Uniform steps in s or log(s) would squeeze all of low SNR (where a high-dimensional
    mixture picks its mode) into the first step.
    """
    x = x.to(torch.float64)
    s_in = x.new_ones([x.shape[0]])
    if kind == "karras":
        grid = torch.linspace(math.log(KARRAS["sigma_max"]), math.log(KARRAS["sigma_min"]),
                              steps + 1, dtype=torch.float64).tolist()
        x = rk4(lambda x, u: x - model(x, math.exp(u) * s_in), x, grid)
        return model(x, KARRAS["sigma_min"] * s_in)

    s_switch = 1.0 - 1e-3
    x = rk4(lambda x, s: (x - model(x, s * s_in)) / s, x,
             torch.linspace(1.0, s_switch, 5, dtype=torch.float64).tolist())

    def flow_s(u):  # s from sigma~ = e^u
        return math.exp(u) / (1.0 + math.exp(u))

    def f(xt, u):
        s = flow_s(u)
        return xt - model((1.0 - s) * xt, s * s_in)

    u_hi = math.log(s_switch / (1 - s_switch))
    u_lo = math.log(FLOW_FLOOR / (1 - FLOW_FLOOR))
    grid = torch.linspace(u_hi, u_lo, steps + 1, dtype=torch.float64).tolist()
    xt = rk4(f, x / (1 - s_switch), grid)
    return model((1 - FLOW_FLOOR) * xt, FLOW_FLOOR * s_in)


SIGMA_START = {"karras": KARRAS["sigma_max"], "flow": 1.0}  # each fixed schedule's first sigma


def initial_noise(kind, noise):
    """x at the first sigma: sigma_max * noise (VE) or the noise itself (flow, sigma = 1)."""
    return noise * SIGMA_START[kind]


def rms(x, ref):
    """Root mean square over all elements (per-coordinate RMS distance)."""
    return float(((x.to(torch.float64) - ref.to(torch.float64)) ** 2).mean().sqrt())


def squared_errors(x, ref):
    """Each sample's mean squared distance to its reference, [B] in float64."""
    return ((x.to(torch.float64) - ref.to(torch.float64)) ** 2).reshape(x.shape[0], -1).mean(1)


def bootstrap_ratio(squared, best_squared, resamples=2000, seed=0) -> list[float]:
    """The 5th and 95th percentiles, over bootstrap resamples of the test samples (the same
    rows for all), of the median over ``squared`` (each a [B] tensor of per-sample squared
    errors: one per calibration seed) of RMS / RMS(``best_squared``): how much of a ratio the
    test noise decides."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(best_squared), (resamples, len(best_squared)),
                         generator=generator)
    best = best_squared.double()[rows].mean(1)
    ratios = torch.stack([(s.double()[rows].mean(1) / best).sqrt() for s in squared])
    medians = ratios.median(0).values if len(squared) % 2 else ratios.quantile(0.5, dim=0)
    return [float(q) for q in medians.quantile(torch.tensor([0.05, 0.95], dtype=torch.float64))]


def median_error(x, ref):
    """The median over the samples of each sample's RMS distance: the typical error, which a
    few samples far off (another mode) do not move."""
    return float(squared_errors(x, ref).sqrt().median())


def sliced_w2(a, b, projections=128, seed=1234):
    """Sliced Wasserstein-2 between two equally sized point sets [N, D] (random unit directions,
    fixed seed; the 1-D W2 of each projection from sorted values)."""
    a = a.reshape(a.shape[0], -1).to(torch.float64)
    b = b.reshape(b.shape[0], -1).to(torch.float64)
    n = min(a.shape[0], b.shape[0])
    a, b = a[:n], b[:n]
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ dirs, dim=0)
    pb, _ = torch.sort(b @ dirs, dim=0)
    return float(((pa - pb) ** 2).mean().sqrt())


def mode_weight_error(labels, weights):
    """Total variation 0.5 * sum_k |w_hat_k - w_k| of the component frequencies."""
    counts = torch.bincount(labels, minlength=len(weights)).to(torch.float64)
    return float(0.5 * (counts / counts.sum() - weights).abs().sum())
