"""LML Calibrate's fit: ``calibrate`` fits a ``Calibration`` (lml_core.calibration) to one model,
schedule and guidance.

The objective is the whole rollout: the final sample's distance to a converged reference from
the same noise (lml_core.reference), plus the states on the way (lml_core.objective).  It is
minimised by Levenberg-Marquardt with finite-difference Jacobians and a ``regularization *
|theta|^2`` pull toward the base.  A held-out part of the noise decides which iterate is kept
(early stopping); a fit that does not beat the base on it returns the base.
"""

from __future__ import annotations

import math
import time

import torch

from .calibration import CALIBRATION_BASES, Calibration, model_kind
from .calibration_text import MAX_HISTORY, SAMPLER_NAME
from .levenberg import levenberg_marquardt, rms
from .objective import Fit, robust_loss, robust_weights
from .reference import Evaluator, Reference, reference_floor, reference_grid
from .sampling import is_flow_model
from .sigma_fit import CountedModel, SigmaFit

CALIBRATE_DEFAULTS = {
    "base": "auto",            # "auto": the best of CALIBRATION_BASES on the noise, or one of them
    "history": 3,              # directions per step the correction may combine
    "move_timesteps": True,    # fit s_1 .. s_{N-1} too (s_0 fixed)
    "heldout": 0.25,           # share of the noise kept for validation
    "iterations": 20,          # Levenberg-Marquardt steps (Jacobians)
    "patience": 6,             # accepted steps without a held-out gain before stopping
    "regularization": 1e-3,    # weight of |theta|^2 (pull toward the base)
    "trajectory": 1.0,         # weight of the states on the way in the objective
    "reference_steps": 32,     # RK4 steps of the converged reference (4 model calls each)
    "reference_floor": None,   # sigma where the reference stops before denoising; None: auto
    "fd_step": None,           # finite-difference step; None: 1e-4 (float64) / 1e-2 (float32)
    "batch_size": None,        # rows per model call; None: all at once
    "sigma_fits": 1,           # with samplers: the best this many get timestep-only fits
}


def fit_options(options: dict) -> dict:
    """CALIBRATE_DEFAULTS updated with ``options``, each checked (a ValueError names it)."""
    unknown = sorted(set(options) - set(CALIBRATE_DEFAULTS))
    if unknown:
        raise ValueError(f"calibrate: unknown option(s) {unknown}; the options are "
                         f"{sorted(CALIBRATE_DEFAULTS)}")
    opts = {**CALIBRATE_DEFAULTS, **options}
    if opts["base"] != "auto" and opts["base"] not in CALIBRATION_BASES:
        raise ValueError(f"base must be 'auto' or one of {CALIBRATION_BASES}, "
                         f"got {opts['base']!r}")
    whole = {"history": 1, "iterations": 0, "patience": 1, "reference_steps": 1,
             "sigma_fits": 0}
    if opts["batch_size"] is not None:
        whole["batch_size"] = 1
    for name, low in whole.items():
        if isinstance(opts[name], bool) or int(opts[name]) != opts[name] or opts[name] < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {opts[name]!r}")
    if opts["history"] > MAX_HISTORY:
        raise ValueError(f"history must be at most {MAX_HISTORY} (a calibration's steps combine "
                         f"1-{MAX_HISTORY} directions), got {opts['history']}")
    if not 0 < float(opts["heldout"]) < 1:
        raise ValueError(f"heldout must be between 0 and 1, got {opts['heldout']}")
    for name in ("regularization", "trajectory"):
        if not (math.isfinite(float(opts[name])) and float(opts[name]) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {opts[name]}")
    for name in ("fd_step", "reference_floor"):
        if opts[name] is not None and not (math.isfinite(float(opts[name]))
                                           and float(opts[name]) > 0):
            raise ValueError(f"{name} must be a finite number > 0 (or None), got {opts[name]}")
    return opts


def checked_schedule(sigmas) -> list[float]:
    values = [float(s) for s in (sigmas.tolist() if torch.is_tensor(sigmas) else sigmas)]
    if len(values) < 2 or values[-1] != 0 or not all(math.isfinite(s) for s in values) or any(
            a <= b for a, b in zip(values[:-1], values[1:])):
        raise ValueError(f"calibrate: sigmas must decrease strictly to 0, got {values}")
    return values


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


class Setup:
    """What both fits share: the checked options and schedules, the noise split into its
    fitting and held-out parts, the counted model (batched calls through ``denoise``, whole
    sampler runs through ``counted``), the reference of both parts and the robust scale."""

    def __init__(self, model, noise, sigmas, extra_args, schedules, progress, log, options,
                 references=None):
        self.opts = opts = fit_options(options)
        self.started = time.perf_counter()
        self.sigmas = checked_schedule(sigmas)
        self.steps = len(self.sigmas) - 1
        if noise.ndim < 2 or noise.shape[0] < 2 or noise[0].numel() == 0:
            raise ValueError("calibrate: need at least 2 noise samples of at least one value, "
                             f"got noise of shape {list(noise.shape)}")
        if not torch.isfinite(noise).all():
            raise ValueError("calibrate: the noise contains NaN or inf values")
        self.schedules = self.checked_schedules(schedules)
        self.flow = is_flow_model(model)
        self.dtype = torch.float64 if noise.dtype == torch.float64 else torch.float32
        self.eps = opts["fd_step"] or (1e-4 if self.dtype == torch.float64 else 1e-2)
        self.say = log or (lambda text: None)
        self.extra_args = extra_args or {}
        x = noise.to(self.dtype)
        n_val = max(1, min(x.shape[0] - 1, round(x.shape[0] * float(opts["heldout"]))))
        self.x_fit, self.x_val = x[:-n_val], x[-n_val:]
        self.planned = 1

        def on_call(*_):
            if progress is not None:
                done = self.evaluations()
                progress(done, max(self.planned, done))

        self.denoise = Evaluator(model, extra_args, self.dtype, opts["batch_size"], on_call)
        self.counted = CountedModel(model, on_call)
        self.floor = reference_floor(model, self.schedules.values(), opts["reference_floor"])
        grid = reference_grid(self.sigmas[0], self.floor, int(opts["reference_steps"]),
                              self.flow)
        build = references or Reference  # references: calibrate_steps' cache (one per run)
        self.ref_fit = build(self.denoise, self.x_fit, grid)
        self.ref_val = build(self.denoise, self.x_val, grid)
        self.say(f"reference: {opts['reference_steps']} RK4 steps to sigma {self.floor:.4g}")
        self.typical = None  # the robust scale: the best start's typical error

    def checked_schedules(self, schedules) -> dict:
        """{name: sigmas} of ``schedules`` that have N steps and start where ``sigmas`` does
        (the noise is at sigmas[0]); the others are left out (``self.left_out`` says why)."""
        self.left_out = {}
        if not schedules:
            return {"given": self.sigmas}
        out = {}
        for name, values in schedules.items():
            values = checked_schedule(values)
            if len(values) != len(self.sigmas):
                self.left_out[name] = f"{len(values) - 1} steps, not {self.steps}"
            elif not math.isclose(values[0], self.sigmas[0], rel_tol=1e-4):
                self.left_out[name] = f"starts at sigma {values[0]:.6g}, not {self.sigmas[0]:.6g}"
            else:
                out[name] = values
        if not out:
            raise ValueError(f"calibrate: no schedule has {self.steps} steps from the noise's "
                             f"sigma {self.sigmas[0]:.6g} ({self.left_out})")
        return out

    def checked_own(self, sampler, schedule, values) -> list[float]:
        """A sampler's own sigmas: from the noise's sigma, at most N steps (a sampler of
        several model calls per step gets fewer steps at the same calls)."""
        values = checked_schedule(values)
        if len(values) > len(self.sigmas) or not math.isclose(values[0], self.sigmas[0],
                                                               rel_tol=1e-4):
            raise ValueError(f"calibrate: sampler_schedules[{sampler!r}][{schedule!r}] must "
                             f"have at most {self.steps} steps from sigma "
                             f"{self.sigmas[0]:.6g}")
        return values

    def evaluations(self) -> int:
        return self.denoise.rows + self.counted.rows

    def fit(self, fit, start_errors):
        """Levenberg-Marquardt on ``fit`` (its theta = 0 is the start, with per-sample errors
        ``start_errors`` on the fitting part): (theta, held-out loss / the start's, accepted
        steps, trace)."""
        self.ref_fit.weights = robust_weights(start_errors, self.typical)
        self.ref_val.weights = None
        opts = self.opts
        return levenberg_marquardt(
            fit, self.x_fit, self.ref_fit,
            lambda theta: robust_loss(fit.final_errors(theta, self.x_val, self.ref_val),
                                      self.typical),
            float(opts["regularization"]), self.eps, int(opts["iterations"]),
            int(opts["patience"]), self.say)

    def report(self, chosen: dict, candidates: dict, starts: dict) -> dict:
        """The report of the chosen candidate among ``candidates`` ({label: scores}), with
        the held-out RMS of the unchanged ``starts`` ({label: RMS})."""
        opts = self.opts
        return {
            "chosen": chosen["label"], "start": chosen["start"],
            "fit_rms": chosen["fit_rms"], "fit_rms_base": chosen["fit_rms_start"],
            "heldout_rms": chosen["heldout_rms"],
            "heldout_rms_base": chosen["heldout_rms_start"],
            "heldout_rms_bases": starts,
            "candidates": {label: {k: c[k] for k in ("fit_rms", "heldout_rms", "heldout_score",
                                                      "iterations")}
                           for label, c in candidates.items()},
            "heldout_loss": chosen["heldout_loss"],
            "samples": {"fit": int(self.x_fit.shape[0]), "heldout": int(self.x_val.shape[0])},
            "iterations": chosen["iterations"], "trace": chosen["trace"],
            "model_calls": self.denoise.calls, "model_evaluations": self.evaluations(),
            "seconds": round(time.perf_counter() - self.started, 3),
            "reference": {"rk4_steps": int(opts["reference_steps"]), "floor": self.floor},
            "options": {k: v for k, v in opts.items() if k != "batch_size"},
            "schedules_left_out": self.left_out,
            "calibrated": chosen["label"] != chosen["start"],
        }

    def fitted_on(self, model) -> dict:
        return {"steps": self.steps, "sigma_max": self.sigmas[0],
                "sigma_min": self.sigmas[-2], "model_kind": model_kind(model),
                "sigmas": self.sigmas, "latent_shape": list(self.x_fit.shape[1:])}


def scores(setup: Setup, label, start, fit, theta, result=None) -> dict:
    """Fit and held-out RMS of ``fit`` at ``theta`` and at its start (theta = 0)."""
    zero = torch.zeros(fit.size, dtype=torch.float64)
    heldout_loss, iterations, trace = result if result is not None else (1.0, 0, [])
    return {"label": label, "start": start, "fit": fit, "theta": theta,
            "fit_rms": rms(fit.final_errors(theta, setup.x_fit, setup.ref_fit)),
            "fit_rms_start": rms(fit.final_errors(zero, setup.x_fit, setup.ref_fit)),
            "heldout_rms": rms(fit.final_errors(theta, setup.x_val, setup.ref_val)),
            "heldout_rms_start": rms(fit.final_errors(zero, setup.x_val, setup.ref_val)),
            "heldout_loss": heldout_loss, "iterations": iterations, "trace": trace}


def fitted(setup: Setup, label, start, fit, start_errors) -> dict:
    theta, heldout_loss, iterations, trace = setup.fit(fit, start_errors)
    if heldout_loss >= 1:  # no gain on the held-out part: the start itself
        return scores(setup, start, start, fit, theta * 0)
    return scores(setup, label, start, fit, theta, (heldout_loss, iterations, trace))


@torch.no_grad()
def calibrate(model, noise, sigmas, extra_args=None, schedules=None, samplers=None,
              sampler_schedules=None, progress=None, log=None, references=None,
              **options) -> Calibration:
    """Fit a calibrated sampler for ``model`` on ``sigmas`` (N + 1 values ending in 0).

    ``noise``: [B, ...] initial latents already at sigmas[0] (B >= 2); the last ``heldout``
    share is held out to choose.  ``schedules``: {name: sigmas} of N steps to start from (the
    host's schedulers; default: ``sigmas`` alone); ``samplers``: {name: k-diffusion function}
    of built-in samplers to measure and fit (default: none), each at most N model calls per
    sample (one that makes more is left out); ``sampler_schedules``: {sampler: {schedule:
    sigmas}} where a sampler gets other sigmas from a scheduler than ``schedules`` says
    (KSampler's discard rule; fewer steps for a sampler of several calls per step).  Measured on the
    fitting noise, the best start (base x schedule) gets the LML fit (corrections and every
    timestep), the best ``sigma_fits`` samplers get timestep-only fits, and the best pair is a
    candidate unchanged; the candidate with the lowest robust loss on the held-out noise wins.
    The calibration's ``fitted_on`` records ``sigmas`` and one sample's ``latent_shape`` (the
    sampler refuses another schedule and warns at another size).
    ``progress(evaluations, planned)`` is called after every model call (a node raises there
    to cancel); ``log(text)`` gets one line per stage; ``references``: calibrate_steps' shared
    reference cache (default: computed here).  Options (``CALIBRATE_DEFAULTS``):

    - base: "auto" (the best of euler, ipndm, ipndm_v) or one of them;
    - history: directions per step the correction combines (1-4);
    - move_timesteps: fit s_1..s_{N-1} in log-SNR too;
    - heldout: the held-out share; iterations, patience: LM steps and early stopping;
    - regularization: weight of |theta|^2 that pulls the fit toward the start;
    - trajectory: weight of the states on the way in the objective (0: final sample only);
    - reference_steps, reference_floor: the RK4 reference (to the model's sigma_min by default);
    - fd_step: the finite-difference step; batch_size: rows per model call;
    - sigma_fits: how many of ``samplers`` get timestep-only fits.
    """
    setup = Setup(model, noise, sigmas, extra_args, schedules, progress, log, options, references)
    bases = CALIBRATION_BASES if setup.opts["base"] == "auto" else (setup.opts["base"],)
    return field_calibration(setup, model, bases, dict(samplers or {}), sampler_schedules,
                             int(setup.opts["sigma_fits"]), one_call=True)


def field_calibration(setup: Setup, model, bases, samplers, sampler_schedules, sigma_fits,
                      one_call) -> Calibration:
    """calibrate's and calibrate_sigmas' three stages (the field, the candidates, the choice)
    for the LML ``bases`` and the built-in ``samplers`` on ``setup``'s schedules; ``one_call``:
    leave out samplers that make more than one model call per step (equal model calls)."""
    opts, steps = setup.opts, setup.steps
    move = bool(opts["move_timesteps"]) and steps >= 2
    size = parameter_count(steps, int(opts["history"]), move)
    rows = setup.x_fit.shape[0]
    setup.planned = (planned_evaluations(steps, rows, setup.x_val.shape[0], opts,
                                         len(bases) * len(setup.schedules), size)
                     if bases else 0) + (
        len(samplers) * len(setup.schedules) * steps * rows
        + min(len(samplers), sigma_fits) * int(opts["iterations"]) * steps * steps * rows)

    # 1. Every start on the fitting noise: the LML bases and the built-in samplers on every
    # schedule.
    starts = {}
    for schedule, values in setup.schedules.items():
        for base in bases:
            fit = Fit(setup.denoise, values, base, int(opts["history"]), move, setup.flow,
                      setup.floor, float(opts["trajectory"]))
            starts[f"lml({base}) + {schedule}"] = fit
        for name, function in samplers.items():
            own = (sampler_schedules or {}).get(name, {}).get(schedule)
            own = values if own is None else setup.checked_own(name, schedule, own)
            starts[f"{name} + {schedule}"] = SigmaFit(
                function, setup.counted, own, setup.flow, setup.floor, setup.extra_args,
                move, opts["batch_size"])
    errors = {}
    for label, fit in starts.items():
        before = setup.counted.rows
        try:
            errors[label] = fit.final_errors(torch.zeros(fit.size, dtype=torch.float64),
                                             setup.x_fit, setup.ref_fit)
        except (RuntimeError, ValueError, ZeroDivisionError) as error:
            if isinstance(fit, Fit):  # lml_core's own sampler: a real error
                raise
            setup.say(f"{label}: cannot run here ({error}); left out")
            continue
        if one_call and setup.counted.rows - before > steps * rows:
            setup.say(f"{label}: more than one model call per step; left out")
            del errors[label]
    if not errors:
        raise ValueError("calibrate: no sampler could run on the calibration noise")
    # The robust scale: the typical (median) error of the best start.
    setup.typical = min(float(e.median()) for e in errors.values())
    losses = {label: robust_loss(e, setup.typical) for label, e in errors.items()}
    ranked = sorted(losses, key=losses.get)
    setup.say("starts on the fitting noise (RMS): " + ", ".join(
        f"{label} {rms(errors[label]):.4g}" for label in ranked[:6]))

    # 2. The candidates: the LML fit from the best LML start, timestep-only fits of the best
    # samplers (each from its best schedule), and the best pair unchanged.
    candidates = {}
    best_lml = next((label for label in ranked if label.startswith("lml(")), None)
    if best_lml is not None:
        result = fitted(setup, f"calibrated {best_lml}", best_lml, starts[best_lml],
                        errors[best_lml])
        candidates[result["label"]] = result
    best_pairs = [label for label in ranked if not label.startswith("lml(")]
    if best_pairs:
        pair = best_pairs[0]
        candidates[pair] = scores(setup, pair, pair, starts[pair],
                                  torch.zeros(starts[pair].size, dtype=torch.float64))
    fitted_samplers = []  # (sampler, schedule) of the timestep-only fits
    for label in best_pairs:
        name, schedule = label.split(" + ")
        if len(fitted_samplers) < sigma_fits and name not in dict(fitted_samplers):
            fitted_samplers.append((name, schedule))
            result = fitted(setup, f"{name} + calibrated sigmas from {schedule}", label,
                            starts[label], errors[label])
            candidates[result["label"]] = result

    # The unchanged starts the report compares with: each LML base and each of the best
    # samplers on its best schedule.
    shortlist = {}
    for label in ranked:
        shortlist.setdefault(label.split(" + ")[0], label)
    compared = [label for label in shortlist.values() if label.startswith("lml(")] + [
        label for label in shortlist.values() if not label.startswith("lml(")][
        :len(fitted_samplers) + 1]
    heldout_starts = {label: rms(starts[label].final_errors(
        torch.zeros(starts[label].size, dtype=torch.float64), setup.x_val, setup.ref_val))
        for label in compared}

    # 3. The winner on the held-out noise.
    for c in candidates.values():
        c["heldout_score"] = robust_loss(c["fit"].final_errors(c["theta"], setup.x_val,
                                                               setup.ref_val), setup.typical)
    chosen = min(candidates.values(), key=lambda c: c["heldout_score"])
    setup.say("candidates on the held-out noise (RMS): " + ", ".join(
        f"{label} {c['heldout_rms']:.4g}" for label, c in candidates.items())
        + f"; chosen {chosen['label']}")
    report = setup.report(chosen, candidates, heldout_starts)
    report["fitted_from"] = {"lml": best_lml,
                             "sigmas": [f"{name} + {schedule}" for name, schedule in
                                        fitted_samplers]}
    fit, theta = chosen["fit"], chosen["theta"]
    if isinstance(fit, Fit):
        return fit.calibration(theta, setup.fitted_on(model), report)
    return Calibration(sampler=chosen["start"].split(" + ")[0], base="",
                       sigmas=fit.plan(theta), corrections=[],
                       fitted_on=setup.fitted_on(model), report=report)


@torch.no_grad()
def calibrate_sigmas(model, noise, sigmas, sampler, extra_args=None, sampler_name=None,
                     schedules=None, progress=None, log=None, **options) -> Calibration:
    """Fit the timesteps of one k-diffusion ``sampler`` function by the whole-rollout
    objective, from ``sigmas`` (N + 1 values ending in 0) or, with ``schedules`` ({name: N + 1
    sigmas}), from the one it does best on; the fit competes with that schedule unchanged on
    the held-out noise.  The Calibration runs that sampler on its own ``sigmas``.
    ``sampler_name``: the host's name for it (default: the function's name less
    ``sample_``).  Options as ``calibrate``'s (base, history, trajectory and sigma_fits do not
    apply)."""
    name = sampler_name or getattr(sampler, "__name__", "").removeprefix("sample_")
    if not SAMPLER_NAME.fullmatch(name or ""):
        raise ValueError(f"calibrate_sigmas: give the sampler's name (sampler_name), got "
                         f"{name!r}")
    setup = Setup(model, noise, sigmas, extra_args, schedules, progress, log, options)
    return field_calibration(setup, model, (), {name: sampler}, None, 1, one_call=False)
