"""The calibrated LML sampler as saved and run: the ``Calibration`` (its numbers, JSON and what
it is valid for) and ``sample_lml_calibrated``.  Everything inference needs, nothing of the fit.

The sampler is a linear multistep method in sigma whose step direction is corrected inside the
low-rank subspace of the previous directions (the subspace LML's correction uses):

    d_n     = (x_n - D(x_n, s_n)) / s_n
    x_{n+1} = x_n + (s_{n+1} - s_n) * sum_j (a_{n,j} + c_{n,j}) d_{n-j},   j < history

``a``: the base solver's coefficients, computed from the sampler's timesteps (``euler``,
``ipndm``, ``ipndm_v``: ComfyUI's own methods); ``c``: the fitted corrections (all zero: the
base itself); ``s_0 .. s_N``: the sampler's own timesteps (``s_N = 0``).  One model call per
step.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

import torch

from .sampling import checked_sigmas, model_sampling_of, report_step, to_d, trange

CALIBRATION_BASES = ("euler", "ipndm", "ipndm_v")
CALIBRATION_FORMAT = "lml-calibration/1"
# What a calibration runs: LML_SAMPLER (the multistep sampler above, on a base) or a built-in
# sampler named by its ComfyUI name (the caller passes the function) on fitted timesteps.
LML_SAMPLER = "lml"
SAMPLER_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")

# Where a schedule counts as the one a calibration was fitted on: float32 sigmas of the same
# scheduler agree to ~1e-7; another sigma range differs by far more.
SIGMA_RTOL = 1e-4

# ComfyUI's ipndm: Adams-Bashforth coefficients of order 1-4 (fixed steps).
IPNDM_COEFFICIENTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12),
                      (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def base_coefficients(base: str, sigmas, i: int) -> list[float]:
    """a_{i,j} of ``base`` at step ``i`` on ``sigmas`` (ComfyUI's sample_<base>, max order 4;
    a final step to sigma 0 is the plain denoising step, as there)."""
    if base not in CALIBRATION_BASES:
        raise ValueError(f"base must be one of {CALIBRATION_BASES}, got {base!r}")
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


def combined(base: list[float], correction: list[float]) -> list[float]:
    """a_{i,.} + c_{i,.}, the shorter one padded with zeros."""
    n = max(len(base), len(correction))
    return [(base[j] if j < len(base) else 0.0) + (correction[j] if j < len(correction) else 0.0)
            for j in range(n)]


def model_kind(model) -> str:
    """The prediction type of a ComfyUI model (its model_sampling's classes), or "unknown"."""
    sampling = model_sampling_of(model)
    names = {c.__name__ for c in type(sampling).__mro__} if sampling is not None else set()
    for kind, name in (("CONST", "flow"), ("V_PREDICTION", "v"), ("EDM", "edm"), ("EPS", "eps")):
        if kind in names:
            return name
    return "unknown"


def describe_schedule(sigmas) -> str:
    return f"{len(sigmas) - 1} steps, sigma {sigmas[0]:.6g} -> {sigmas[-2]:.6g} -> 0"


# --------------------------------------------------------------------------------------------
# The one multistep loop (the sampler, the fit's rollouts and its forked Jacobian all use it)


def multistep(x, history, sigmas, coefficients, i):
    """x_{i+1} = x_i + (s_{i+1} - s_i) sum_j coefficients[j] history[j] (most recent first)."""
    step = coefficients[0] * history[0]
    for c, d in zip(coefficients[1:], history[1:]):
        step = step + c * d
    return x + (sigmas[i + 1] - sigmas[i]) * step


def multistep_run(denoise, x, sigmas, coefficients, keep, start=0, history=()):
    """The multistep sampler from step ``start`` (with the directions ``history`` of the steps
    before it, most recent first), one step at a time: yields ``(i, x_i, denoised_i, history_i,
    x_{i+1})``, where history_i already holds d_i.  ``denoise(x, sigma)`` is the model."""
    history = list(history)
    for i in range(start, len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        history = [to_d(x, sigmas[i], denoised), *history][:keep]
        x_next = multistep(x, history, sigmas, coefficients[i], i)
        yield i, x, denoised, history, x_next
        x = x_next


# --------------------------------------------------------------------------------------------
# The calibration


@dataclass(frozen=True)
class Calibration:
    """Fitted numbers and what they are valid for.  ``sampler``: what runs (LML_SAMPLER, the
    multistep sampler on ``base`` with ``corrections[i]`` = c_{i,j}; or a built-in sampler's
    name, with no base and no corrections); ``sigmas``: the sampler's own timesteps (N + 1,
    ending in 0); ``fitted_on``: the schedule it was fitted on (steps, first and last nonzero
    sigma) and the model kind; ``report``: errors and cost."""

    base: str
    sigmas: list
    corrections: list
    fitted_on: dict
    report: dict = field(default_factory=dict)
    format: str = CALIBRATION_FORMAT
    sampler: str = LML_SAMPLER

    def __post_init__(self):
        if self.format != CALIBRATION_FORMAT:
            raise ValueError(f"calibration: unknown format {self.format!r} "
                             f"(expected {CALIBRATION_FORMAT!r})")
        if not (isinstance(self.sampler, str) and SAMPLER_NAME.fullmatch(self.sampler)):
            raise ValueError("calibration: sampler must be a sampler name (lower-case letters, "
                             f"digits, _), got {str(self.sampler)[:80]!r}")
        builtin = self.sampler != LML_SAMPLER
        if builtin and (self.base or self.corrections):
            raise ValueError(f"calibration: a calibration of the built-in sampler "
                             f"{self.sampler!r} has no base and no corrections")
        if not builtin and self.base not in CALIBRATION_BASES:
            raise ValueError(f"calibration: base must be one of {CALIBRATION_BASES}, "
                             f"got {self.base!r}")
        sig = [float(s) for s in self.sigmas]
        if len(sig) < 2 or sig[-1] != 0 or not all(math.isfinite(s) for s in sig) or any(
                a <= b for a, b in zip(sig[:-1], sig[1:])):
            raise ValueError("calibration: sigmas must be finite, strictly decreasing and end "
                             f"in 0, got {sig}")
        steps = len(sig) - 1
        corr = [[float(c) for c in row] for row in self.corrections]
        if (not builtin and len(corr) != steps) or not all(
                math.isfinite(c) for row in corr for c in row):
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
                                      "format", "sampler"})
        if unknown:
            raise ValueError(f"calibration: unknown field(s) {unknown}")
        try:
            return cls(**data)
        except (TypeError, KeyError, AttributeError) as error:
            raise ValueError(f"calibration: malformed ({error})") from None


# --------------------------------------------------------------------------------------------
# The sampler


@torch.no_grad()
def sample_lml_calibrated(model, x, sigmas, extra_args=None, callback=None, disable=None,
                          calibration=None, samplers=None):
    """The calibrated sampler (k-diffusion signature).  ``sigmas`` must be the schedule the
    calibration was fitted on (a ValueError names both otherwise); the sampler then steps on
    the calibration's own timesteps: the LML multistep sampler, or the built-in sampler it
    names, taken from ``samplers`` ({name: k-diffusion function}; a ValueError names a missing
    one)."""
    if not isinstance(calibration, Calibration):
        raise ValueError("sample_lml_calibrated: calibration must be a Calibration, got "
                         f"{type(calibration).__name__}")
    given = checked_sigmas("lml_calibrated", x, sigmas)
    calibration.check_schedule(given)
    if calibration.sampler != LML_SAMPLER:
        function = (samplers or {}).get(calibration.sampler)
        if function is None:
            raise ValueError(f"this calibration runs the sampler {calibration.sampler!r}, "
                             f"which this host does not have (samplers given: "
                             f"{sorted(samplers or {})})")
        own = torch.tensor(calibration.sigmas, dtype=sigmas.dtype, device=sigmas.device)
        out = function(model, x, own, extra_args=extra_args, callback=callback,
                       disable=disable)
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"lml_calibrated: {calibration.sampler} produced NaN or "
                                     "inf values")
        return out
    extra_args = {} if extra_args is None else extra_args
    out_dtype = x.dtype
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    own = calibration.sigmas
    s_in = x.new_ones([x.shape[0]], dtype=dtype)

    def denoise(x, sigma):
        denoised = model(x, sigma * s_in, **extra_args).to(dtype)
        if not torch.isfinite(denoised).all():
            raise FloatingPointError(f"lml_calibrated: the model returned NaN or inf at step "
                                     f"{own.index(sigma) + 1} of {calibration.steps} "
                                     f"(sigma={sigma:.4g})")
        return denoised

    coefficients = [calibration.coefficients(i) for i in range(calibration.steps)]
    keep = max(len(c) for c in coefficients)
    steps = multistep_run(denoise, x.to(dtype), own, coefficients, keep)
    for _ in trange(calibration.steps, disable=disable):
        i, x_i, denoised, _history, x = next(steps)
        report_step(callback, x_i, i, sigmas[i], denoised, None)
    return x.to(out_dtype)
