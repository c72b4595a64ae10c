"""LML Calibrate's fit: ``calibrate`` fits a ``Calibration`` (lml_core.calibration) to one model,
schedule and guidance.

The objective is the whole rollout: the final sample's distance to a converged reference
(lml_core.reference), plus the states on the way (lml_core.objective), minimised by
Levenberg-Marquardt (lml_core.levenberg).  A held-out part of the noise selects; a test part
only scores.
"""

from __future__ import annotations

import math
import time

import torch

from .calibrate_options import checked_schedule, fit_options
from .calibration import CALIBRATION_BASES, Calibration, model_kind
from .calibration_text import SAMPLER_NAME
from .field import LML_FITS, measured_starts, planned_evaluations, start_kind, twin_starts
from .levenberg import fitted, levenberg_marquardt, raced, rms, scores, theta_key
from .linear_fit import LinearFit
from .objective import Fit, fd_step_for, robust_loss, robust_weights
from .projection import BuiltinSteps
from .reference import Evaluator, Reference, reference_floor, reference_grid
from .sampling import is_flow_model
from .sigma_fit import CountedModel, SigmaFit


def memo_key(fit, theta, part: str):
    return id(fit), part, theta_key(theta)


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
        self.eps = opts["fd_step"] or fd_step_for(opts["model_dtype"] or noise.dtype)
        self.say = log or (lambda text: None)
        self.extra_args = extra_args or {}
        # Fit, select, test: the fitting noise fits, the selection ("held-out") noise chooses
        # the iterate and the candidate, and the test noise only scores what was chosen.
        x = noise.to(self.dtype)
        total = x.shape[0]
        n_val = max(1, min(total - 1, round(total * float(opts["heldout"]))))
        n_test = max(0, min(total - n_val - 1, round(total * float(opts["test"]))))
        n_fit = total - n_val - n_test
        parts = (slice(0, n_fit), slice(n_fit, n_fit + n_val), slice(n_fit + n_val, total))
        self.x_fit, self.x_val, self.x_test = (x[part] for part in parts)
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
        # references: calibrate_steps' cache of the reference of each noise
        reference = (references or Reference)(self.denoise, x, grid, self.flow)
        self.ref_fit, self.ref_val, self.ref_test = (reference.subset(p, own_scale=True)
                                                     for p in parts)
        self.say(f"reference: {opts['reference_steps']} multistep steps to sigma {self.floor:.4g}")
        self.typical = None  # the robust scale: the best start's typical error
        self.memo = {}  # errors(): {(fit, part, theta): per-sample final errors}
        self.losses = {}  # {id(fit): {theta: fitting objective}}: a fit's run goes on cheaply

    def checked_schedules(self, schedules) -> dict:
        """{name: sigmas} of ``schedules`` that have N steps and start where ``sigmas`` does
        (the noise is at sigmas[0]); the others are left out (``self.left_out`` says why)."""
        self.left_out = {}
        if not schedules:
            return {"given": self.sigmas}
        out = {}
        for name, values in schedules.items():
            values = checked_schedule(values, f"schedules[{name!r}]")
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
        """A sampler's own sigmas: from the noise's sigma, at most N steps (fewer: more calls)."""
        values = checked_schedule(values, f"sampler_schedules[{sampler!r}][{schedule!r}]")
        if len(values) > len(self.sigmas) or not math.isclose(values[0], self.sigmas[0],
                                                               rel_tol=1e-4):
            raise ValueError(f"calibrate: sampler_schedules[{sampler!r}][{schedule!r}] must "
                             f"have at most {self.steps} steps from sigma "
                             f"{self.sigmas[0]:.6g}")
        return values

    def rollout_errors(self, fit, theta, part: str):
        """(per-sample final errors, per-sample objective) of ``fit`` at ``theta`` on the
        "fit", "val" (selection) or "test" noise, each rollout run once: the fit, the choice
        and the report share them."""
        key = memo_key(fit, theta, part)
        if key not in self.memo:
            x, reference = {"fit": (self.x_fit, self.ref_fit), "val": (self.x_val, self.ref_val),
                            "test": (self.x_test, self.ref_test)}[part]
            self.memo[key] = fit.rollout_errors(theta, x, reference)
        return self.memo[key]

    def errors(self, fit, theta, part: str):
        """Per-sample final errors (rollout_errors): what the report's RMS reads."""
        return self.rollout_errors(fit, theta, part)[0]

    def heldout_loss(self, fit, theta) -> float:
        """The robust loss of the objective on the selection noise: what chooses iterates,
        raced fits and the candidate (the states on the way count, as in the fit)."""
        return robust_loss(self.rollout_errors(fit, theta, "val")[1], self.typical)

    def test_rms(self, fit, theta):
        """RMS of ``fit`` at ``theta`` on the test noise (None without any): it chose nothing."""
        return None if self.x_test.shape[0] == 0 else rms(self.errors(fit, theta, "test"))

    def evaluations(self) -> int:
        return self.denoise.rows + self.counted.rows

    def fit(self, fit, start_errors, iterations=None, theta0=None, first=0):
        """Levenberg-Marquardt on ``fit`` from its start (per-sample objective
        ``start_errors``, which weighs the noises),
        or on from ``theta0`` as iteration ``first``, for ``iterations`` (default: the
        option): (theta, held-out loss / the start's, accepted steps, trace)."""
        self.ref_fit.weights = robust_weights(start_errors, self.typical)
        self.ref_val.weights = None
        opts = self.opts
        return levenberg_marquardt(
            fit, self.x_fit, self.ref_fit,
            lambda theta: self.heldout_loss(fit, theta),
            float(opts["regularization"]), self.eps,
            int(opts["iterations"]) if iterations is None else iterations,
            int(opts["patience"]), self.say, int(opts["jacobian_rows"]),
            float(opts["tolerance"]), theta0, first,
            self.losses.setdefault(id(fit), {}))

    def report(self, chosen: dict, candidates: dict, starts: dict, test_starts: dict) -> dict:
        """The report of the chosen candidate among ``candidates`` ({label: scores}), with
        the held-out and test RMS of the unchanged starts (``starts``, ``test_starts``:
        {label: RMS}).  "heldout" is the selection noise (it chose); "test" chose nothing."""
        opts = self.opts
        test_start = self.test_rms(chosen["fit"], torch.zeros(chosen["fit"].size))
        return {
            "chosen": chosen["label"], "start": chosen["start"],
            "fit_rms": chosen["fit_rms"], "fit_rms_base": chosen["fit_rms_start"],
            "heldout_rms": chosen["heldout_rms"],
            "heldout_rms_base": chosen["heldout_rms_start"],
            "heldout_rms_bases": starts,
            "test_rms": chosen["test_rms"], "test_rms_base": test_start,
            "test_rms_bases": test_starts,
            "candidates": {label: {k: c[k] for k in ("fit_rms", "heldout_rms", "heldout_score",
                                                      "test_rms", "iterations")}
                           for label, c in candidates.items()},
            "heldout_loss": chosen["heldout_loss"],
            "samples": {"fit": int(self.x_fit.shape[0]), "heldout": int(self.x_val.shape[0]),
                        "test": int(self.x_test.shape[0])},
            "iterations": chosen["iterations"], "trace": chosen["trace"],
            "model_calls": self.denoise.calls, "model_evaluations": self.evaluations(),
            "seconds": round(time.perf_counter() - self.started, 3),
            "reference": {"steps": int(opts["reference_steps"]), "floor": self.floor},
            "options": {k: v for k, v in opts.items() if k != "batch_size"},
            "schedules_left_out": self.left_out,
            "calibrated": chosen["label"] != chosen["start"],
        }

    def fitted_on(self, model) -> dict:
        return {"steps": self.steps, "sigma_max": self.sigmas[0],
                "sigma_min": self.sigmas[-2], "model_kind": model_kind(model),
                "sigmas": self.sigmas, "latent_shape": list(self.x_fit.shape[1:])}


@torch.no_grad()
def calibrate(model, noise, sigmas, extra_args=None, schedules=None, samplers=None,
              sampler_schedules=None, progress=None, log=None, references=None,
              **options) -> Calibration:
    """Fit a calibrated sampler for ``model`` on ``sigmas`` (N + 1 values ending in 0).

    ``noise``: [B, ...] initial latents already at sigmas[0] (B >= 2): a ``heldout`` share
    chooses, the last ``test`` share only scores (report["test_rms"]), the rest fits.
    ``schedules``: {name: N-step sigmas} to start from (default: ``sigmas``); ``samplers``:
    {name: k-diffusion function} to measure and fit (one of more than N model calls per
    sample is left out); ``sampler_schedules``: {sampler: {schedule: sigmas}} where KSampler
    gives a sampler other sigmas (its discard rule; fewer steps at several calls per step).
    The LML starts are its bases on every schedule and, with base "auto", each one-call
    sampler's own steps as LML coefficients (lml_core.projection; with ``linear_fits``, its
    exact linear map: lml_core.linear_fit); the best start of each of
    those two kinds gets the LML fit (corrections and every timestep), from 6 steps up for
    ``race`` iterations and the better one on the held-out noise to the end; the best ``sigma_fits``
    samplers (default 0) get timestep-only fits; the best pair stays a candidate unchanged;
    the lowest robust loss of the objective on the held-out noise wins.  ``fitted_on`` records
    ``sigmas`` and one sample's ``latent_shape`` (the sampler refuses another schedule, warns
    at another size).
    ``progress(evaluations, planned)`` is called after every model call (a node raises there
    to cancel); ``log(text)`` gets one line per stage; ``references``: calibrate_steps' shared
    reference cache (default: computed here).  Options (``CALIBRATE_DEFAULTS``):

    - base: "auto" (the best of euler, ipndm, ipndm_v) or one of them;
    - history: directions per step the correction combines (1-4);
    - move_timesteps: fit s_1..s_{N-1} in log-SNR too;
    - heldout, test: the selection and test shares; iterations, patience: LM steps and
      early stopping; tolerance: converged below this relative gain (twice in a row);
      jacobian_rows: fitting noises per Jacobian (in turn; 0: all);
    - screen_rows, finalists: the field ranked on that many noises, then that many of each
      kind (LML, built-in) on all;
    - regularization: weight of |theta|^2 that pulls the fit toward the start;
    - trajectory: weight of the states on the way in the objective (0: final sample only);
    - reference_steps, reference_floor: the multistep reference (to the model's sigma_min by
      default);
    - fd_step: the finite-difference step (default: by model_dtype, the precision the model
      computes in, which may be lower than the noise's); batch_size: rows per model call;
    - sigma_fits: how many of ``samplers`` get timestep-only fits;
    - builtin_starts: LML starts from the samplers' own steps (with base "auto");
    - linear_fits: those starts fit the sampler's exact linear map with free rows
      (lml_core.linear_fit, saved as "lml_linear") instead of its projection (default on);
    - race: iterations after which only the better of the two LML fits goes on (0: both;
      below levenberg.RACE_FROM_STEPS steps both always).
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
    # LML starts from the built-in samplers' steps: with every LML base ("auto") only.
    projected_starts = bool(opts["builtin_starts"]) and len(bases) == len(CALIBRATION_BASES)

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
                move, opts["batch_size"], float(opts["trajectory"]))
            # The LML fit may also start from this pair's own steps (where they are N).
            # Not where its steps are no LML plan: not identified, or corrections past
            # MAX_CORRECTION (lms over linear_quadratic's first tiny steps at history 4).
            if projected_starts and name not in bases and len(own) == steps + 1:
                if opts["linear_fits"]:
                    fit = LinearFit(setup.denoise, function, model, own, int(opts["history"]),
                                    move, setup.flow, setup.floor, float(opts["trajectory"]))
                else:
                    fit = Fit(setup.denoise, own, "euler", int(opts["history"]), move,
                              setup.flow, setup.floor, float(opts["trajectory"]),
                              start=BuiltinSteps(function, model, int(opts["history"])))
                if fit.plan(torch.zeros(fit.size, dtype=torch.float64)) is not None:
                    starts[f"lml({name}) + {schedule}"] = fit
    n_lml = sum(isinstance(fit, LML_FITS) for fit in starts.values())
    kinds = {start_kind(fit) for fit in starts.values()}
    setup.planned = planned_evaluations(setup, n_lml, len(starts) - n_lml, move,
                                        min(len(samplers), sigma_fits), len(kinds),
                                        sum(k.startswith("lml") for k in kinds))
    twins = twin_starts(starts, model)
    if twins:
        setup.say(f"{len(twins)} LML starts are built-in pairs' own samplers (run once): "
                  + ", ".join(f"{k} = {v}" for k, v in twins.items()))
    measured = measured_starts(setup, starts, steps, one_call, twins)
    if not measured:
        raise ValueError("calibrate: no sampler could run on the calibration noise")
    for label, e in measured.items():  # the finalists ran on all the fitting noise: reused
        if e[0].shape[0] == setup.x_fit.shape[0]:
            setup.memo[memo_key(starts[label], torch.zeros(starts[label].size), "fit")] = e
    # Every choice reads the objective (the final sample and the states on the way), not the
    # final error alone: on 16 fitting noises it ranks the starts that send fewer noises to
    # another mode first (docs/calibration_options.md).  The robust scale: the best start's
    # typical (median) objective.
    objectives = {label: objective for label, (_, objective) in measured.items()}
    setup.typical = min(float(e.median()) for e in objectives.values())
    losses = {label: robust_loss(e, setup.typical) for label, e in objectives.items()}
    ranked = sorted(losses, key=losses.get)
    setup.say("starts on the fitting noise (RMS): " + ", ".join(
        f"{label} {rms(measured[label][0]):.4g}" for label in ranked[:6]))

    # 2. The candidates: the LML fits, timestep-only fits of the best samplers (each from its
    # best schedule), and the best pair unchanged.  The LML fit runs from the best start of
    # each LML kind, an LML base and a built-in's own steps (the best start is not always the
    # best end: a fit is local).
    candidates = {}
    fitted_lml = []
    for kind in ("lml", "lml from a built-in"):
        best = next((label for label in ranked if start_kind(starts[label]) == kind), None)
        if best is not None:
            fitted_lml.append(best)
    for label, run in raced(setup, starts, objectives, fitted_lml):
        result = fitted(setup, f"calibrated {label}", label, starts[label], objectives[label],
                        run)
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
                            starts[label], objectives[label])
            candidates[result["label"]] = result

    # The unchanged starts the report compares with: each LML base on its best schedule, the
    # LML starts fitted, and each of the best samplers on its best schedule (not every
    # built-in's steps as an LML start: their held-out and test runs would cost ~5% more).
    shortlist = {}
    for label in ranked:
        shortlist.setdefault(label.split(" + ")[0], label)
    compared = [label for label in shortlist.values() if start_kind(starts[label]) == "lml"]
    compared += [label for label in fitted_lml if label not in compared] + [
        label for label in shortlist.values() if not label.startswith("lml(")][
        :len(fitted_samplers) + 1]
    zero = {label: torch.zeros(starts[label].size, dtype=torch.float64) for label in compared}
    heldout_starts = {k: rms(setup.errors(starts[k], zero[k], "val")) for k in compared}
    test_starts = {k: setup.test_rms(starts[k], zero[k]) for k in compared}

    # 3. The winner on the held-out noise.
    for c in candidates.values():
        c["heldout_score"] = setup.heldout_loss(c["fit"], c["theta"])
    chosen = min(candidates.values(), key=lambda c: c["heldout_score"])
    setup.say("candidates on the held-out noise (RMS): " + ", ".join(
        f"{label} {c['heldout_rms']:.4g}" for label, c in candidates.items())
        + f"; chosen {chosen['label']}")
    report = setup.report(chosen, candidates, heldout_starts, test_starts)
    best_pair = candidates.get(best_pairs[0]) if best_pairs else None
    report["test_rms_best_pair"] = None if best_pair is None else best_pair["test_rms"]
    report["fitted_from"] = {"lml": fitted_lml,
                             "sigmas": [f"{name} + {schedule}" for name, schedule in
                                        fitted_samplers]}
    fit, theta = chosen["fit"], chosen["theta"]
    if isinstance(fit, LML_FITS):
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
    ``sample_``).  Options as ``calibrate``'s (base, history and sigma_fits do not apply;
    trajectory weighs the states the sampler passes through, read off its model calls)."""
    name = sampler_name or getattr(sampler, "__name__", "").removeprefix("sample_")
    if not SAMPLER_NAME.fullmatch(name or ""):
        raise ValueError(f"calibrate_sigmas: give the sampler's name (sampler_name), got "
                         f"{name!r}")
    setup = Setup(model, noise, sigmas, extra_args, schedules, progress, log, options)
    return field_calibration(setup, model, (), {name: sampler}, None, 1, one_call=False)
