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

With calibrate's ``linear_fits``, a calibration fitted from a built-in sampler's steps is that
sampler's whole linear map, fitted (LINEAR_SAMPLER, lml_core.linear_fit): every state a linear
combination of the first latent and the model's outputs so far, x_{k+1} = r_{k,0} x_0 + sum_m
r_{k,m+1} D(x_m, s_m), which any one-call-per-step sampler is at zero corrections (uni_pc's
corrector and dpmpp_2m's exponential steps included, which the multistep form above only
approximates).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field

import torch

from .calibration_text import (
    CALIBRATION_BASES,
    CALIBRATION_FORMAT,
    LINEAR_SAMPLER,
    LML_SAMPLER,
    SET_FORMAT,
    SIGMA_RTOL,
    check_step_counts,
    checked_fields,
    in_entry,
    parse,
    parse_set,
)
from .sampling import checked_sigmas, model_sampling_of, report_step, to_d, trange

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
    """"sigma a -> b -> 0: [the sigmas]" (the middle left out where there are many)."""
    values = [f"{s:.6g}" for s in sigmas]
    if len(values) > 10:
        values = [*values[:6], "...", *values[-3:]]
    return f"sigma {sigmas[0]:.6g} -> {sigmas[-2]:.6g} -> 0: [{', '.join(values)}]"


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


def linear_state(row, x0, outputs):
    """row[0] x_0 + sum_m row[m + 1] outputs[m]: a LINEAR_SAMPLER state."""
    x = row[0] * x0
    for c, denoised in zip(row[1:], outputs):
        x = x + c * denoised
    return x


# --------------------------------------------------------------------------------------------
# The calibration


@dataclass(frozen=True)
class Calibration:
    """Fitted numbers and what they are valid for.  ``sampler``: what runs (LML_SAMPLER, the
    multistep sampler on ``base`` with ``corrections[i]`` = c_{i,j}; LINEAR_SAMPLER, the
    linear map whose rows ``corrections`` holds (``linear_state``), with no base; or a
    built-in sampler's name, with no base and no corrections); ``sigmas``: the sampler's own
    timesteps (N + 1, ending in 0); ``fitted_on``: what it was fitted on (steps, first and
    last nonzero sigma, model kind; from format 2 on the whole schedule ``sigmas``, one
    sample's ``latent_shape`` and, from the node, the ``scheduler``); ``report``: errors and
    cost.  Every field is checked when it is built (lml_core.calibration_text): a ValueError
    names the first wrong one."""

    base: str
    sigmas: list
    corrections: list
    fitted_on: dict
    report: dict = field(default_factory=dict)
    format: str = CALIBRATION_FORMAT
    sampler: str = LML_SAMPLER

    def __post_init__(self):
        sig, corr, fit = checked_fields(self.format, self.base, self.sigmas, self.corrections,
                                        self.fitted_on, self.report, self.sampler)
        object.__setattr__(self, "sigmas", sig)
        object.__setattr__(self, "corrections", corr)
        object.__setattr__(self, "fitted_on", fit)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def coefficients(self, i: int) -> list[float]:
        """a_{i,j} + c_{i,j} at step i."""
        return combined(base_coefficients(self.base, self.sigmas, i), self.corrections[i])

    def check_schedule(self, sigmas) -> None:
        """ValueError naming both schedules unless ``sigmas`` is the one this was fitted on:
        every sigma within SIGMA_RTOL (a format-1 calibration knows only the step count and
        the first and last nonzero sigma, and is checked on those)."""
        given = [float(s) for s in sigmas]
        fit = self.fitted_on
        if "sigmas" in fit:
            want = fit["sigmas"]
            ok = len(given) == len(want) and all(
                math.isclose(a, b, rel_tol=SIGMA_RTOL) for a, b in zip(given, want))
            scheduler = f" of the {fit['scheduler']} schedule" if "scheduler" in fit else ""
            fitted = f"{fit['steps']} steps{scheduler}, {describe_schedule(want)}"
            differ = next((k for k, (a, b) in enumerate(zip(given, want))
                           if not math.isclose(a, b, rel_tol=SIGMA_RTOL)), None)
            where = (f" (sigma {differ} differs: {want[differ]:.6g} fitted, "
                     f"{given[differ]:.6g} given)"
                     if differ is not None and len(given) == len(want) else "")
        else:
            ends = [fit["sigma_max"], fit["sigma_min"]]
            ok = (len(given) - 1 == fit["steps"] and len(given) >= 2 and given[-1] == 0
                  and all(math.isclose(a, b, rel_tol=SIGMA_RTOL)
                          for a, b in zip([given[0], given[-2]], ends)))
            fitted = (f"{fit['steps']} steps, sigma {ends[0]:.6g} -> {ends[1]:.6g} -> 0 "
                      "(a format-1 calibration: its schedule's ends only)")
            where = ""
        if not ok:
            shown = describe_schedule(given) if len(given) >= 2 else str(given)
            raise ValueError(
                f"this calibration was fitted for {fitted}; the sampler was given "
                f"{len(given) - 1} steps, {shown}{where}. Use the same scheduler, steps and "
                "denoise as the calibration, or calibrate again for this schedule")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        """The calibration in ``text`` (``to_json``'s), or a ValueError that starts with
        "calibration:" and names what is wrong."""
        data = parse(text)
        try:
            return cls(**data)
        except (TypeError, KeyError, AttributeError) as error:  # a check missed: still named
            raise ValueError(f"calibration: malformed ({error})") from None


# --------------------------------------------------------------------------------------------
# Several step counts: a set of calibrations, one per step count


def calibration_list(calibrations) -> list[Calibration]:
    """``calibrations`` (a Calibration, or a list or tuple of 1 to MAX_SET of them with
    distinct step counts) as a list by step count, or a ValueError."""
    items = [calibrations] if isinstance(calibrations, Calibration) else calibrations
    if not (isinstance(items, (list, tuple)) and items
            and all(isinstance(c, Calibration) for c in items)):
        raise ValueError("calibration must be a Calibration or a list of them (one per step "
                         f"count), got {type(calibrations).__name__}")
    check_step_counts([c.fitted_on["steps"] for c in items])
    return sorted(items, key=lambda c: c.fitted_on["steps"])


def step_counts(counts) -> str:
    """[4, 6, 8] -> "4, 6 and 8"."""
    names = [str(n) for n in counts]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def calibrations_from_json(text) -> list[Calibration]:
    """Every calibration of ``text``: a set's (SET_FORMAT: one per step count, by step count),
    or the one calibration of a format-1 / format-2 text as a list of one; else a ValueError
    that starts with "calibration:" and names the field (and a set's entry,
    ``calibrations[k]``)."""
    is_set, entries = parse_set(text)
    if not is_set:
        return [Calibration.from_json(text)]
    out = []
    for k, data in enumerate(entries):
        try:
            out.append(Calibration(**data))
        except ValueError as error:
            raise in_entry(k, error) from None
        except (TypeError, KeyError, AttributeError) as error:  # a check missed: still named
            raise ValueError(f"calibration: calibrations[{k}]: malformed ({error})") from None
    return calibration_list(out)


def calibrations_to_json(calibrations) -> str:
    """One calibration: its own text (``to_json``, format 2); several: a set (SET_FORMAT) by
    step count.  ``calibrations_from_json`` reads both back exactly."""
    items = calibration_list(calibrations)
    if len(items) == 1:
        return items[0].to_json()
    return json.dumps({"format": SET_FORMAT, "calibrations": [asdict(c) for c in items]},
                      indent=1)


def pick_calibration(calibrations, sigmas) -> Calibration:
    """The calibration of ``calibrations`` (one, or a list: calibration_list) fitted on the
    schedule ``sigmas``: the one of its step count, checked as ``check_schedule`` does; a
    ValueError naming the step counts there are when none has its step count."""
    items = calibration_list(calibrations)
    given = [float(s) for s in sigmas]
    steps = len(given) - 1
    match = next((c for c in items if c.fitted_on["steps"] == steps), None)
    if match is None and len(items) > 1:
        schedulers = {c.fitted_on.get("scheduler") for c in items}
        scheduler = schedulers.pop() if len(schedulers) == 1 else None
        shown = describe_schedule(given) if len(given) >= 2 else str(given)
        raise ValueError(
            f"calibration: fitted for {step_counts([c.fitted_on['steps'] for c in items])} steps"
            f"{f' of the {scheduler} schedule' if scheduler else ''}, got {steps} steps "
            f"({shown}). Sample with one of those step counts (the same scheduler and "
            f"denoise), or calibrate again with {steps} among LML Calibrate's steps")
    match = match or items[0]  # a single calibration names both schedules itself
    match.check_schedule(given)
    return match


# --------------------------------------------------------------------------------------------
# The sampler


@torch.no_grad()
def sample_lml_calibrated(model, x, sigmas, extra_args=None, callback=None, disable=None,
                          calibration=None, samplers=None):
    """The calibrated sampler (k-diffusion signature).  ``calibration``: a Calibration, or a
    list of them (one per step count: the one of ``sigmas``' step count runs, a ValueError
    names the step counts there are when none has it).  ``sigmas`` must be the schedule the
    calibration was fitted on (a ValueError names both otherwise); the sampler then steps on
    the calibration's own timesteps: the LML multistep sampler, or the built-in sampler it
    names, taken from ``samplers`` ({name: k-diffusion function}; a ValueError names a missing
    one).  A latent of another size than the fitted one is sampled with a logged warning."""
    if not isinstance(calibration, (Calibration, list, tuple)):
        raise ValueError("sample_lml_calibrated: calibration must be a Calibration (or a list "
                         f"of them, one per step count), got {type(calibration).__name__}")
    given = checked_sigmas("lml_calibrated", x, sigmas)
    calibration = pick_calibration(calibration, given)
    fitted_shape = calibration.fitted_on.get("latent_shape")
    if fitted_shape is not None and list(x.shape[1:]) != fitted_shape:
        # Another size is a different problem the fit never saw; it may still do well there.
        logging.warning("lml_calibrated: this calibration was fitted on latents of shape %s; "
                        "sampling latents of shape %s (it runs, but its gain was measured at "
                        "the fitted size only)", fitted_shape, list(x.shape[1:]))
    if calibration.sampler not in (LML_SAMPLER, LINEAR_SAMPLER):
        function = (samplers or {}).get(calibration.sampler)
        if function is None:
            raise ValueError(f"this calibration runs the sampler {calibration.sampler!r}, "
                             f"which this host does not have (samplers given: "
                             f"{sorted(samplers or {})})")
        own = torch.tensor(calibration.sigmas, dtype=sigmas.dtype, device=sigmas.device)
        out = function(model, x, own, extra_args={} if extra_args is None else extra_args,
                       callback=callback, disable=disable)
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

    if calibration.sampler == LINEAR_SAMPLER:
        x0 = x_i = x.to(dtype)
        outputs = []
        for i in trange(calibration.steps, disable=disable):
            outputs.append(denoise(x_i, own[i]))
            report_step(callback, x_i, i, sigmas[i], outputs[-1], None)
            x_i = linear_state(calibration.corrections[i], x0, outputs)
        return x_i.to(out_dtype)
    coefficients = [calibration.coefficients(i) for i in range(calibration.steps)]
    keep = max(len(c) for c in coefficients)
    steps = multistep_run(denoise, x.to(dtype), own, coefficients, keep)
    for _ in trange(calibration.steps, disable=disable):
        i, x_i, denoised, _history, x = next(steps)
        report_step(callback, x_i, i, sigmas[i], denoised, None)
    return x.to(out_dtype)
