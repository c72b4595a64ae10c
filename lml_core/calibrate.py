"""LML Calibrate: an LML sampler fitted to one model, schedule and guidance.

The calibrated sampler is a linear multistep method in sigma whose step direction is corrected
inside the low-rank subspace of the previous directions (the subspace LML's correction uses):

    d_n     = (x_n - D(x_n, s_n)) / s_n
    x_{n+1} = x_n + (s_{n+1} - s_n) * sum_j (a_{n,j} + c_{n,j}) d_{n-j},   j < history

``a``: the base solver's coefficients, computed from the current timesteps (``euler``,
``ipndm``, ``ipndm_v``: ComfyUI's own methods); ``c``: the fitted corrections, zero-initialised
so that the uncalibrated sampler IS the base; ``s_1 .. s_{N-1}``: the timesteps, optionally
moved in log-SNR (``s_0`` fixed, ``s_N = 0``).  One model call per step.

``calibrate`` fits ``c`` and the timesteps on the model itself: the objective is the final
sample's distance to a converged reference from the same noise (the whole rollout), minimised
by Levenberg-Marquardt with finite-difference Jacobians and a damping ``damping * |theta|^2``
that pulls toward the base.  A held-out part of the noise decides what is kept (early
stopping); a fit that does not beat the base on it returns the base.  The Jacobian's columns
are rollouts forked from the current trajectory at the first step each parameter touches, so
memory holds one trajectory state plus one final sample per parameter, whatever the step count.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from .adaptive import half_log_snr
from .sampling import is_flow_model, to_d

try:  # ComfyUI ships tqdm; the benchmarks do not need it.
    from tqdm.auto import trange
except ImportError:  # pragma: no cover
    def trange(n, disable=None):
        return range(n)

CALIBRATION_BASES = ("euler", "ipndm", "ipndm_v")
BASES = CALIBRATION_BASES
CALIBRATION_FORMAT = "lml-calibration/1"

# Where a schedule counts as the one a calibration was fitted on: float32 sigmas of the same
# scheduler agree to ~1e-7; another sigma range differs by far more.
SIGMA_RTOL = 1e-4

CALIBRATE_DEFAULTS = {
    "base": "auto",            # "auto": the best of BASES on the fitting noise, or one of BASES
    "history": 3,              # directions per step the correction may combine
    "move_timesteps": True,    # fit s_1 .. s_{N-1} too (s_0 fixed)
    "heldout": 0.25,           # share of the noise kept for validation
    "iterations": 20,          # Levenberg-Marquardt steps (Jacobians)
    "patience": 6,             # accepted steps without a held-out gain before stopping
    "damping": 1e-3,           # weight of |theta|^2 (pull toward the base)
    "trajectory": 1.0,         # weight of the states on the way in the objective
    "reference_steps": 32,     # RK4 steps of the converged reference (4 model calls each)
    "reference_floor": None,   # sigma where the reference stops before denoising; None: auto
    "fd_step": None,           # finite-difference step; None: 1e-4 (float64) / 1e-2 (float32)
    "batch_size": None,        # rows per model call; None: all at once
}

# ComfyUI's ipndm: Adams-Bashforth coefficients of order 1-4 (fixed steps).
IPNDM_COEFFICIENTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12),
                      (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def base_coefficients(base: str, sigmas, i: int) -> list[float]:
    """a_{i,j} of ``base`` at step ``i`` on ``sigmas`` (ComfyUI's sample_<base>, max order 4;
    a final step to sigma 0 is the plain denoising step, as there)."""
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    order = min(4, i + 1)
    if base == "euler" or sigmas[i + 1] == 0 or order == 1:
        return [1.0]
    if base == "ipndm":
        return list(IPNDM_COEFFICIENTS[order - 1])
    # ipndm_v: variable-step Adams-Bashforth (h in sigma), as comfy's sample_ipndm_v.
    h = [sigmas[i + 1] - sigmas[i]] + [sigmas[i - k] - sigmas[i - k - 1] for k in range(3)
                                       if i - k - 1 >= 0]
    h0, h1 = h[0], h[1]
    c1, c2 = (2 + h0 / h1) / 2, -(h0 / h1) / 2
    if order == 2:
        return [c1, c2]
    h2 = h[2]
    t1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return [c1 + t1, c2 - (1 + h1 / h2) * t1, t1 * h1 / h2]
    h3 = h[3]
    t2 = (((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2)))
          * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3)))
    r = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [c1 + t1 + t2,
            c2 - (1 + h1 / h2) * t1 - (1 + h1 / h2 + r) * t2,
            t1 * h1 / h2 + (h1 / h2 + r * (1 + h2 / h3)) * t2,
            -t2 * r * h1 / h2]


def model_kind(model) -> str:
    """The prediction type of a ComfyUI model (its model_sampling's classes), or "unknown"."""
    sampling = getattr(getattr(getattr(model, "inner_model", None), "inner_model", None),
                       "model_sampling", None)
    names = {c.__name__ for c in type(sampling).__mro__} if sampling is not None else set()
    for kind in ("CONST", "V_PREDICTION", "EDM", "EPS"):
        if kind in names:
            return {"CONST": "flow", "V_PREDICTION": "v", "EDM": "edm", "EPS": "eps"}[kind]
    return "unknown"


def model_sigma_min(model):
    sampling = getattr(getattr(getattr(model, "inner_model", None), "inner_model", None),
                       "model_sampling", None)
    value = getattr(sampling, "sigma_min", None)
    return float(value) if value is not None else None


def sigma_of(t: float, flow: bool) -> float:
    """Inverse of half_log_snr."""
    return 1.0 / (1.0 + math.exp(t)) if flow else math.exp(-t)


def describe_schedule(sigmas) -> str:
    return f"{len(sigmas) - 1} steps, sigma {sigmas[0]:.6g} -> {sigmas[-2]:.6g} -> 0"


# --------------------------------------------------------------------------------------------
# The calibration


@dataclass(frozen=True)
class Calibration:
    """Fitted numbers and what they are valid for.  ``sigmas``: the sampler's own timesteps
    (N + 1, ending in 0); ``corrections[i]``: c_{i,j}; ``fitted_on``: the schedule it was fitted
    on (steps, first and last nonzero sigma) and the model kind; ``report``: errors and cost."""

    base: str
    sigmas: list
    corrections: list
    fitted_on: dict
    report: dict = field(default_factory=dict)
    format: str = CALIBRATION_FORMAT

    def __post_init__(self):
        if self.format != CALIBRATION_FORMAT:
            raise ValueError(f"calibration: unknown format {self.format!r} "
                             f"(expected {CALIBRATION_FORMAT!r})")
        if self.base not in BASES:
            raise ValueError(f"calibration: base must be one of {BASES}, got {self.base!r}")
        sig = [float(s) for s in self.sigmas]
        if len(sig) < 2 or sig[-1] != 0 or not all(math.isfinite(s) for s in sig) or any(
                a <= b for a, b in zip(sig[:-1], sig[1:])):
            raise ValueError("calibration: sigmas must be finite, strictly decreasing and end "
                             f"in 0, got {sig}")
        steps = len(sig) - 1
        corr = [[float(c) for c in row] for row in self.corrections]
        if len(corr) != steps or not all(math.isfinite(c) for row in corr for c in row):
            raise ValueError(f"calibration: corrections must be {steps} rows of finite numbers")
        if int(self.fitted_on.get("steps", -1)) != steps:
            raise ValueError(f"calibration: fitted_on.steps ({self.fitted_on.get('steps')}) "
                             f"does not match its {steps} sigmas")
        object.__setattr__(self, "sigmas", sig)
        object.__setattr__(self, "corrections", corr)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def coefficients(self, i: int) -> list[float]:
        """a_{i,j} + c_{i,j} at step i."""
        return combined(base_coefficients(self.base, self.sigmas, i), self.corrections[i])

    def check_schedule(self, sigmas) -> None:
        """ValueError naming both schedules unless ``sigmas`` is the one this was fitted on
        (same step count, same first and last nonzero sigma)."""
        given = [float(s) for s in sigmas]
        fit = self.fitted_on
        want = [fit["sigma_max"], fit["sigma_min"]]
        ok = (len(given) - 1 == fit["steps"] and len(given) >= 2 and given[-1] == 0
              and all(math.isclose(a, b, rel_tol=SIGMA_RTOL)
                      for a, b in zip([given[0], given[-2]], want)))
        if not ok:
            raise ValueError(
                f"this calibration was fitted for {fit['steps']} steps, sigma "
                f"{want[0]:.6g} -> {want[1]:.6g} -> 0; the sampler was given "
                f"{describe_schedule(given) if len(given) >= 2 else given}. "
                "Use the same steps, scheduler and denoise as the calibration, or calibrate "
                "again for this schedule")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"calibration: not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise ValueError("calibration: expected a JSON object")
        missing = sorted({"base", "sigmas", "corrections", "fitted_on"} - set(data))
        if missing:
            raise ValueError(f"calibration: missing field(s) {missing}")
        unknown = sorted(set(data) - {"base", "sigmas", "corrections", "fitted_on", "report",
                                      "format"})
        if unknown:
            raise ValueError(f"calibration: unknown field(s) {unknown}")
        try:
            return cls(**data)
        except (TypeError, KeyError, AttributeError) as error:
            raise ValueError(f"calibration: malformed ({error})") from None


def combined(base: list[float], correction: list[float]) -> list[float]:
    n = max(len(base), len(correction))
    return [(base[j] if j < len(base) else 0.0) + (correction[j] if j < len(correction) else 0.0)
            for j in range(n)]


# --------------------------------------------------------------------------------------------
# The sampler


def multistep(x, history, sigmas, coefficients, i):
    """x_{i+1} = x_i + (s_{i+1} - s_i) sum_j coefficients[j] history[j] (most recent first)."""
    step = coefficients[0] * history[0]
    for c, d in zip(coefficients[1:], history[1:]):
        step = step + c * d
    return x + (sigmas[i + 1] - sigmas[i]) * step


@torch.no_grad()
def sample_lml_calibrated(model, x, sigmas, extra_args=None, callback=None, disable=None,
                          calibration=None):
    """The calibrated LML sampler (k-diffusion signature).  ``sigmas`` must be the schedule the
    calibration was fitted on (a ValueError names both otherwise); the sampler then steps on
    the calibration's own timesteps."""
    if not isinstance(calibration, Calibration):
        raise ValueError("sample_lml_calibrated: calibration must be a Calibration, got "
                         f"{type(calibration).__name__}")
    calibration.check_schedule(sigmas.tolist() if torch.is_tensor(sigmas) else sigmas)
    if not torch.isfinite(x).all():
        raise ValueError("lml_calibrated: the input latent contains NaN or inf values")
    extra_args = {} if extra_args is None else extra_args
    out_dtype = x.dtype
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    own = calibration.sigmas
    x = x.to(dtype)
    s_in = x.new_ones([x.shape[0]])
    history = []
    keep = max(len(calibration.coefficients(i)) for i in range(calibration.steps))
    for i in trange(calibration.steps, disable=disable):
        denoised = model(x, own[i] * s_in, **extra_args).to(dtype)
        if not torch.isfinite(denoised).all():
            raise FloatingPointError(f"lml_calibrated: the model returned NaN or inf at step "
                                     f"{i + 1} of {calibration.steps} (sigma={own[i]:.4g})")
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                      "denoised": denoised})
        history = [to_d(x, own[i], denoised), *history][:keep]
        x = multistep(x, history, own, calibration.coefficients(i), i)
    return x.to(out_dtype)


# --------------------------------------------------------------------------------------------
# Fitting


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
    where log-SNR is infinite, first takes 4 steps uniform in sigma down to 1 - 1e-3)."""
    lead = []
    hi = sigma_start
    if flow and sigma_start > 1 - 1e-3:
        hi = 1 - 1e-3
        lead = [sigma_start + (hi - sigma_start) * k / 4 for k in range(4)]
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


class Fit:
    """The parameter layout theta = (timestep shifts in log-SNR, then the corrections c_{i,j}
    step by step), rollouts of it, and the residual the fit minimises: the final sample's
    distance to the reference plus, with weight ``trajectory``, the distance of the states on
    the way (at the sampler's own sigmas, each weighted by how much an error there moves the
    final sample: data scale / sqrt(sigma^2 + alpha^2 scale^2)).  The second term keeps the
    fit from steering off the trajectory early and back later: a noise near a decision
    boundary would not come back (a different mode), and the few fitting noises rarely show
    that."""

    PROBE = 4096  # state coordinates per sample the trajectory term reads (a fixed subset)

    def __init__(self, denoise, sigmas, base, history, move_timesteps, flow, floor,
                 trajectory=0.0):
        self.denoise, self.base, self.flow, self.floor = denoise, base, flow, floor
        self.sigmas = list(sigmas)
        self.steps = len(sigmas) - 1
        self.trajectory = trajectory
        self.t = [half_log_snr(s, flow) for s in self.sigmas[:-1]]
        # s_1 .. s_{N-1}; the last one only where it may move down (it never goes below the
        # floor, where the reference ends).
        movable = range(1, self.steps - 1 if self.sigmas[-2] <= floor * (1 + 1e-6) else self.steps)
        self.moved = list(movable) if move_timesteps else []
        self.n_time = len(self.moved)
        self.slots = [min(i + 1, history) for i in range(self.steps)]
        self.offsets = [self.n_time + sum(self.slots[:i]) for i in range(self.steps)]
        self.size = self.n_time + sum(self.slots)
        # The first step each parameter changes: s_k is the target of step k - 1.
        self.first_step = [k - 1 for k in self.moved] + [
            i for i in range(self.steps) for _ in range(self.slots[i])]
        self.keep = max(max(self.slots), 4 if base != "euler" else 1)

    def plan(self, theta):
        """(sigmas, coefficient lists) for ``theta``; None where the timesteps are not strictly
        decreasing or fall below the floor."""
        values = theta.tolist()
        sig = list(self.sigmas)
        for p, k in enumerate(self.moved):
            sig[k] = sigma_of(self.t[k] + values[p], self.flow)
        nonzero = sig[:-1]
        if any(a <= b for a, b in zip(nonzero[:-1], nonzero[1:])) or (
                nonzero[-1] < self.floor * (1 - 1e-9)):
            return None
        coefficients = [combined(base_coefficients(self.base, sig, i),
                                 values[self.offsets[i]:self.offsets[i] + self.slots[i]])
                        for i in range(self.steps)]
        return sig, coefficients

    def calibration(self, theta, fitted_on, report) -> Calibration:
        sig, _ = self.plan(theta)
        values = theta.tolist()
        corrections = [values[self.offsets[i]:self.offsets[i] + self.slots[i]]
                       for i in range(self.steps)]
        return Calibration(base=self.base, sigmas=sig, corrections=corrections,
                           fitted_on=fitted_on, report=report)

    def rollout(self, plan, x, start=0, history=(), states=None):
        """The final sample and the states x_1..x_{N-1} (``states``: those before ``start``)."""
        sig, coefficients = plan
        history = list(history)
        states = list(states or [])
        for i in range(start, self.steps):
            history = [to_d(x, sig[i], self.denoise(x, sig[i])), *history][:self.keep]
            x = multistep(x, history, sig, coefficients[i], i)
            if i < self.steps - 1:
                states.append(x)
        return x, states

    def residual(self, outcome, sig, reference: Reference):
        final, states = outcome
        parts = [reference.weigh(final - reference.final).reshape(-1).to(torch.float64)]
        if self.trajectory > 0 and self.steps > 1:
            rows = final.shape[0]
            width = final[0].numel()
            probe = slice(None) if width <= self.PROBE else torch.linspace(
                0, width - 1, self.PROBE, device=final.device).long()
            share = math.sqrt(self.trajectory / (self.steps - 1) * width
                              / (width if width <= self.PROBE else self.PROBE))
            scale = reference.scale
            for n, state in enumerate(states, start=1):
                alpha = 1 - sig[n] if self.flow else 1.0
                weight = share * scale / math.sqrt(sig[n] ** 2 + (alpha * scale) ** 2)
                diff = reference.weigh(state - reference.at(sig[n])).reshape(rows, -1)[:, probe]
                parts.append(weight * diff.reshape(-1).to(torch.float64))
        return torch.cat(parts)

    def loss(self, plan, x, reference):
        """(objective residual's mean square, the final sample's mean square error)."""
        outcome = self.rollout(plan, x)
        r = self.residual(outcome, plan[0], reference)
        return float((r * r).sum()) / outcome[0].numel(), mse(outcome[0], reference.final)

    def final_errors(self, theta, x, reference):
        """Per-sample RMS of the final sample against the reference."""
        final = self.rollout(self.plan(theta), x)[0]
        return (final.to(torch.float64) - reference.final.to(torch.float64)).reshape(
            final.shape[0], -1).pow(2).mean(1).sqrt()

    def jacobian(self, theta, x, reference, eps):
        """(residual at ``theta``, Jacobian [rows, P]) by forward differences (-eps where +eps
        is infeasible).  Each column's rollout forks from the trajectory at the first step its
        parameter changes and reuses that step's model call."""
        plan = self.plan(theta)
        sig, coefficients = plan
        columns = [None] * self.size
        steps = [eps] * self.size
        forks = []
        history, states = [], []
        for i in range(self.steps):
            history = [to_d(x, sig[i], self.denoise(x, sig[i])), *history][:self.keep]
            for p in (p for p in range(self.size) if self.first_step[p] == i):
                moved = theta.clone()
                moved[p] += eps
                fork_plan = self.plan(moved)
                if fork_plan is None:
                    moved[p] -= 2 * eps
                    steps[p] = -eps
                    fork_plan = self.plan(moved)
                if fork_plan is None:  # pinned both ways: no derivative
                    continue
                x_next = multistep(x, history, fork_plan[0], fork_plan[1][i], i)
                fork_states = states + ([x_next] if i < self.steps - 1 else [])
                outcome = self.rollout(fork_plan, x_next, i + 1, history, fork_states)
                forks.append((p, self.residual(outcome, fork_plan[0], reference)))
            x = multistep(x, history, sig, coefficients[i], i)
            if i < self.steps - 1:
                states.append(x)
        residual = self.residual((x, states), sig, reference)
        for p, fork in forks:
            columns[p] = (fork - residual) / steps[p]
        jac = torch.stack([torch.zeros_like(residual) if c is None else c for c in columns], 1)
        return residual, jac


def mse(x, ref) -> float:
    return float(((x.to(torch.float64) - ref.to(torch.float64)) ** 2).mean())


# A noise whose error is ROBUST_SCALE x the typical (median) one counts 1/sqrt(2) in the fit.
ROBUST_SCALE = 3.0


def robust_weights(errors, typical: float):
    """Cauchy weights 1 / sqrt(1 + (e / (ROBUST_SCALE typical))^2) per noise.  The few noises
    that end in another mode than the reference (an error many times the typical one) would
    otherwise dominate a least-squares fit, which then bends every step to move those few
    and generalises worse; they still count, with a weight ~ typical / error."""
    c = ROBUST_SCALE * max(typical, 1e-300)
    return 1.0 / torch.sqrt(1.0 + (errors / c) ** 2)


def robust_loss(errors, typical: float) -> float:
    """The Cauchy loss c^2 log(1 + (e / c)^2) averaged over the noises (c as above): what the
    weights minimise, used to compare bases and held-out iterates."""
    c = ROBUST_SCALE * max(typical, 1e-300)
    return float((c * c * torch.log1p((errors / c) ** 2)).mean())


def fit_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(CALIBRATE_DEFAULTS))
    if unknown:
        raise ValueError(f"calibrate: unknown option(s) {unknown}; the options are "
                         f"{sorted(CALIBRATE_DEFAULTS)}")
    opts = {**CALIBRATE_DEFAULTS, **options}
    if opts["base"] != "auto" and opts["base"] not in BASES:
        raise ValueError(f"base must be 'auto' or one of {BASES}, got {opts['base']!r}")
    for name, low in (("history", 1), ("iterations", 0), ("patience", 1),
                      ("reference_steps", 1)):
        if isinstance(opts[name], bool) or int(opts[name]) != opts[name] or opts[name] < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {opts[name]!r}")
    if not 0 < float(opts["heldout"]) < 1:
        raise ValueError(f"heldout must be between 0 and 1, got {opts['heldout']}")
    for name in ("damping", "trajectory"):
        if not (math.isfinite(float(opts[name])) and float(opts[name]) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {opts[name]}")
    return opts


def parameter_count(steps: int, history: int, move_timesteps: bool) -> int:
    return (steps - 1 if move_timesteps and steps >= 2 else 0) + sum(
        min(i + 1, history) for i in range(steps))


def planned_evaluations(steps, rows_fit, rows_val, opts, n_bases, size) -> int:
    """About how many per-row model evaluations calibrate makes (for a progress bar; the
    fit may stop early)."""
    reference = (4 * (int(opts["reference_steps"]) + 4) + 1) * (rows_fit + rows_val)
    bases = n_bases * steps * (rows_fit + rows_val)
    jacobian = (steps + size * steps // 2) * rows_fit
    per_iteration = jacobian + 2 * steps * rows_fit + steps * rows_val
    return reference + bases + int(opts["iterations"]) * per_iteration + steps * rows_fit


@torch.no_grad()
def calibrate(model, noise, sigmas, extra_args=None, progress=None, log=None,
              **options) -> Calibration:
    """Fit a calibrated LML sampler for ``model`` on ``sigmas`` (N + 1 values ending in 0).

    ``noise``: [B, ...] initial latents already at sigmas[0] (B >= 2); the last ``heldout``
    share is held out.  ``progress(evaluations, planned)`` is called after every model call (a
    node raises there to cancel); ``log(text)`` gets one line per stage.  Options
    (``CALIBRATE_DEFAULTS``):

    - base: "auto" (the best of euler, ipndm, ipndm_v on the fitting noise) or one of them;
    - history: directions per step the correction combines (1-4);
    - move_timesteps: fit s_1..s_{N-1} in log-SNR too;
    - heldout: the held-out share; iterations, patience: LM steps and early stopping;
    - damping: weight of |theta|^2 that pulls the fit toward the base;
    - trajectory: weight of the states on the way in the objective (0: final sample only);
    - reference_steps, reference_floor: the RK4 reference (to the model's sigma_min by default);
    - fd_step: the finite-difference step; batch_size: rows per model call.
    """
    opts = fit_options(options)
    started = time.perf_counter()
    sigma_list = [float(s) for s in (sigmas.tolist() if torch.is_tensor(sigmas) else sigmas)]
    if len(sigma_list) < 2 or sigma_list[-1] != 0 or any(
            a <= b for a, b in zip(sigma_list[:-1], sigma_list[1:])):
        raise ValueError(f"calibrate: sigmas must decrease strictly to 0, got {sigma_list}")
    if noise.shape[0] < 2:
        raise ValueError(f"calibrate: need at least 2 noise samples, got {noise.shape[0]}")
    if not torch.isfinite(noise).all():
        raise ValueError("calibrate: the noise contains NaN or inf values")
    steps = len(sigma_list) - 1
    flow = is_flow_model(model)
    dtype = torch.float64 if noise.dtype == torch.float64 else torch.float32
    eps = opts["fd_step"] or (1e-4 if dtype == torch.float64 else 1e-2)
    bases = BASES if opts["base"] == "auto" else (opts["base"],)
    say = log or (lambda text: None)

    x = noise.to(dtype)
    n_val = max(1, min(x.shape[0] - 1, round(x.shape[0] * float(opts["heldout"]))))
    x_fit, x_val = x[:-n_val], x[-n_val:]
    move = bool(opts["move_timesteps"]) and steps >= 2
    planned = planned_evaluations(steps, x_fit.shape[0], n_val, opts, len(bases),
                                  parameter_count(steps, int(opts["history"]), move))

    def on_call(evaluator):
        if progress is not None:
            progress(evaluator.rows, max(planned, evaluator.rows))

    denoise = Evaluator(model, extra_args, dtype, opts["batch_size"], on_call)
    sigma_min = model_sigma_min(model)
    floor = opts["reference_floor"]
    if floor is None:
        floor = min(sigma_list[-2], sigma_min) if sigma_min else sigma_list[-2]
    floor = min(float(floor), sigma_list[-2])
    grid = reference_grid(sigma_list[0], floor, int(opts["reference_steps"]), flow)
    ref_fit, ref_val = Reference(denoise, x_fit, grid), Reference(denoise, x_val, grid)
    say(f"reference: {opts['reference_steps']} RK4 steps to sigma {floor:.4g}")

    fits, errors = {}, {}
    for name in bases:
        fit = Fit(denoise, sigma_list, name, int(opts["history"]), move, flow, floor,
                  float(opts["trajectory"]))
        zero = torch.zeros(fit.size, dtype=torch.float64)
        fits[name] = fit
        errors[name] = (fit.final_errors(zero, x_fit, ref_fit),
                        fit.final_errors(zero, x_val, ref_val))
    # The base: the lowest robust loss on all the noise (a base has nothing fitted, so the
    # held-out part may take part); the typical error sets the robust scale from here on.
    typical = float(torch.cat(errors[bases[0]]).median())
    base = min(bases, key=lambda name: robust_loss(torch.cat(errors[name]), typical))
    fit = fits[base]
    typical = float(torch.cat(errors[base]).median())
    ref_fit.weights = robust_weights(errors[base][0], typical)
    ref_val.weights = robust_weights(errors[base][1], typical)
    say("bases on all the noise (RMS): " + ", ".join(
        f"{name} {float(torch.cat(e).pow(2).mean().sqrt()):.4g}" for name, e in errors.items())
        + f"; base {base}")

    theta = torch.zeros(fit.size, dtype=torch.float64)
    base_objective, base_fit_mse = fit.loss(fit.plan(theta), x_fit, ref_fit)
    rows = x_fit.numel()
    scale = max(base_objective, 1e-300) * rows  # the objective is relative to the base's
    lam = float(opts["damping"])

    def objective(value, theta):
        return value * rows / scale + lam * float(theta @ theta)

    def heldout(theta):
        return robust_loss(fit.final_errors(theta, x_val, ref_val), typical)

    val_base = heldout(theta)
    best = (val_base, theta.clone())
    current = base_objective
    mu = 1e-2
    stale = 0
    accepted = 0
    trace = []
    identity = torch.eye(fit.size, dtype=torch.float64)
    for iteration in range(int(opts["iterations"])):
        residual, jac = fit.jacobian(theta, x_fit, ref_fit, eps)
        jtj = jac.T @ jac / scale
        gradient = jac.T @ residual / scale + lam * theta
        diag = torch.diagonal(jtj).clamp(min=1e-12 * float(torch.diagonal(jtj).max()) + 1e-30)
        improved = False
        for _trial in range(10):
            try:
                delta = -torch.linalg.solve(jtj + lam * identity + mu * torch.diag(diag),
                                            gradient)
            except RuntimeError:
                mu *= 10
                continue
            candidate = theta + delta
            plan = fit.plan(candidate)
            if plan is None:
                mu *= 4
                continue
            value, _ = fit.loss(plan, x_fit, ref_fit)
            if objective(value, candidate) < objective(current, theta):
                theta, current = candidate, value
                mu = max(mu / 3, 1e-7)
                improved = True
                break
            mu *= 4
        if not improved:
            say(f"iteration {iteration + 1}: no step lowers the fitting objective; stopping")
            break
        accepted += 1
        val = heldout(theta)
        trace.append([round(current / base_objective, 6), round(val / val_base, 6)])
        say(f"iteration {iteration + 1}: objective {current / base_objective:.4g} x the "
            f"base's, held-out loss {val / val_base:.4g} x the base's")
        if val < best[0] * (1 - 1e-4):
            best, stale = (val, theta.clone()), 0
        else:
            stale += 1
            if stale >= int(opts["patience"]):
                say(f"held-out error has not improved for {stale} steps; stopping")
                break

    val_best, theta = best

    def rms_of(errors):
        return float(errors.pow(2).mean().sqrt())

    heldout_bases = {name: rms_of(e[1]) for name, e in errors.items()}
    report = {
        "fit_rms": rms_of(fit.final_errors(theta, x_fit, ref_fit)),
        "fit_rms_base": rms_of(errors[base][0]),
        "heldout_rms": rms_of(fit.final_errors(theta, x_val, ref_val)),
        "heldout_rms_base": heldout_bases[base],
        "heldout_rms_bases": heldout_bases,
        "heldout_loss": val_best / val_base,
        "samples": {"fit": int(x_fit.shape[0]), "heldout": int(x_val.shape[0])},
        "iterations": accepted, "trace": trace,
        "model_calls": denoise.calls, "model_evaluations": denoise.rows,
        "seconds": round(time.perf_counter() - started, 3),
        "reference": {"rk4_steps": int(opts["reference_steps"]), "floor": floor},
        "options": {k: v for k, v in opts.items() if k != "batch_size"},
        "robust_scale": ROBUST_SCALE * typical,
        "calibrated": bool(val_best < val_base),
    }
    fitted_on = {"steps": steps, "sigma_max": sigma_list[0], "sigma_min": sigma_list[-2],
                 "model_kind": model_kind(model)}
    return fit.calibration(theta, fitted_on, report)
