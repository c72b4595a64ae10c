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
from .calibration_text import MAX_HISTORY
from .objective import Fit, robust_loss, robust_weights
from .reference import Evaluator, Reference, reference_grid
from .sampling import is_flow_model, model_sampling_of

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
    whole = {"history": 1, "iterations": 0, "patience": 1, "reference_steps": 1}
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


def reference_floor(model, sigmas: list[float], requested) -> float:
    """Where the reference stops before its denoising step: the model's sigma_min (or the
    schedule's last nonzero sigma, if lower or unknown), never above that last sigma."""
    if requested is None:
        sigma_min = getattr(model_sampling_of(model), "sigma_min", None)
        requested = min(sigmas[-2], float(sigma_min)) if sigma_min is not None else sigmas[-2]
    return min(float(requested), sigmas[-2])


def rms(errors) -> float:
    return float(errors.pow(2).mean().sqrt())


def levenberg_marquardt(fit: Fit, x, reference: Reference, heldout, regularization, eps,
                        iterations, patience, say):
    """Levenberg-Marquardt on ``fit``'s objective (relative to the base's) + ``regularization
    * |theta|^2`` from theta = 0; ``heldout(theta)`` scores each accepted iterate and the best
    one is returned, with the number of accepted steps and the trace of (objective, held-out)
    ratios to the base's."""
    theta = torch.zeros(fit.size, dtype=torch.float64)
    base_objective = fit.loss(fit.plan(theta), x, reference)
    rows = x.numel()
    scale = max(base_objective, 1e-300) * rows

    def objective(value, theta):
        return value * rows / scale + regularization * float(theta @ theta)

    val_base = heldout(theta)
    best_val, best_theta = val_base, theta.clone()
    current, mu, stale, accepted, trace = base_objective, 1e-2, 0, 0, []
    identity = torch.eye(fit.size, dtype=torch.float64)
    for iteration in range(iterations):
        residual, jac = fit.jacobian(theta, x, reference, eps)
        jtj = jac.T @ jac / scale
        gradient = jac.T @ residual / scale + regularization * theta
        diag = torch.diagonal(jtj).clamp(min=1e-12 * float(torch.diagonal(jtj).max()) + 1e-30)
        improved = False
        for _trial in range(10):  # raise mu until a step lowers the objective
            try:
                delta = -torch.linalg.solve(jtj + regularization * identity
                                            + mu * torch.diag(diag), gradient)
            except RuntimeError:
                mu *= 10
                continue
            plan = fit.plan(theta + delta)
            if plan is None:
                mu *= 4
                continue
            value = fit.loss(plan, x, reference)
            if objective(value, theta + delta) < objective(current, theta):
                theta, current, mu, improved = theta + delta, value, max(mu / 3, 1e-7), True
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
        if val < best_val * (1 - 1e-4):
            best_val, best_theta, stale = val, theta.clone(), 0
        else:
            stale += 1
            if stale >= patience:
                say(f"held-out error has not improved for {stale} steps; stopping")
                break
    return best_theta, best_val / val_base, accepted, trace


@torch.no_grad()
def calibrate(model, noise, sigmas, extra_args=None, progress=None, log=None,
              **options) -> Calibration:
    """Fit a calibrated LML sampler for ``model`` on ``sigmas`` (N + 1 values ending in 0).

    ``noise``: [B, ...] initial latents already at sigmas[0] (B >= 2); the last ``heldout``
    share is held out.  The calibration's ``fitted_on`` records ``sigmas`` and one sample's
    ``latent_shape`` (the sampler refuses another schedule and warns at another size).
    ``progress(evaluations, planned)`` is called after every model call (a node raises there
    to cancel); ``log(text)`` gets one line per stage.  Options (``CALIBRATE_DEFAULTS``):

    - base: "auto" (the best of euler, ipndm, ipndm_v on all the noise) or one of them;
    - history: directions per step the correction combines (1-4);
    - move_timesteps: fit s_1..s_{N-1} in log-SNR too;
    - heldout: the held-out share; iterations, patience: LM steps and early stopping;
    - regularization: weight of |theta|^2 that pulls the fit toward the base;
    - trajectory: weight of the states on the way in the objective (0: final sample only);
    - reference_steps, reference_floor: the RK4 reference (to the model's sigma_min by default);
    - fd_step: the finite-difference step; batch_size: rows per model call.
    """
    opts = fit_options(options)
    started = time.perf_counter()
    sigma_list = checked_schedule(sigmas)
    if noise.ndim < 2 or noise.shape[0] < 2 or noise[0].numel() == 0:
        raise ValueError("calibrate: need at least 2 noise samples of at least one value, got "
                         f"noise of shape {list(noise.shape)}")
    if not torch.isfinite(noise).all():
        raise ValueError("calibrate: the noise contains NaN or inf values")
    steps = len(sigma_list) - 1
    flow = is_flow_model(model)
    dtype = torch.float64 if noise.dtype == torch.float64 else torch.float32
    eps = opts["fd_step"] or (1e-4 if dtype == torch.float64 else 1e-2)
    bases = CALIBRATION_BASES if opts["base"] == "auto" else (opts["base"],)
    say = log or (lambda text: None)

    # 1. The noise: the fitting part, then the held-out part.
    x = noise.to(dtype)
    n_val = max(1, min(x.shape[0] - 1, round(x.shape[0] * float(opts["heldout"]))))
    x_fit, x_val = x[:-n_val], x[-n_val:]
    move = bool(opts["move_timesteps"]) and steps >= 2
    planned = planned_evaluations(steps, x_fit.shape[0], n_val, opts, len(bases),
                                  parameter_count(steps, int(opts["history"]), move))

    def on_call(evaluator):
        if progress is not None:
            progress(evaluator.rows, max(planned, evaluator.rows))

    # 2. The converged reference of both parts.
    denoise = Evaluator(model, extra_args, dtype, opts["batch_size"], on_call)
    floor = reference_floor(model, sigma_list, opts["reference_floor"])
    grid = reference_grid(sigma_list[0], floor, int(opts["reference_steps"]), flow)
    ref_fit, ref_val = Reference(denoise, x_fit, grid), Reference(denoise, x_val, grid)
    say(f"reference: {opts['reference_steps']} RK4 steps to sigma {floor:.4g}")

    # 3. The base: the lowest robust loss on all the noise (a base has nothing fitted, so the
    # held-out part may take part); its typical error sets the robust scale from here on.
    fits, errors = {}, {}
    for name in bases:
        fits[name] = Fit(denoise, sigma_list, name, int(opts["history"]), move, flow, floor,
                         float(opts["trajectory"]))
        zero = torch.zeros(fits[name].size, dtype=torch.float64)
        errors[name] = (fits[name].final_errors(zero, x_fit, ref_fit),
                        fits[name].final_errors(zero, x_val, ref_val))
    typical = float(torch.cat(errors[bases[0]]).median())
    base = min(bases, key=lambda name: robust_loss(torch.cat(errors[name]), typical))
    fit = fits[base]
    typical = float(torch.cat(errors[base]).median())
    ref_fit.weights = robust_weights(errors[base][0], typical)
    ref_val.weights = robust_weights(errors[base][1], typical)
    say("bases on all the noise (RMS): " + ", ".join(
        f"{name} {rms(torch.cat(e)):.4g}" for name, e in errors.items()) + f"; base {base}")

    # 4. Levenberg-Marquardt on the fitting part, the iterate kept chosen on the held-out part.
    theta, heldout_loss, accepted, trace = levenberg_marquardt(
        fit, x_fit, ref_fit,
        lambda theta: robust_loss(fit.final_errors(theta, x_val, ref_val), typical),
        float(opts["regularization"]), eps, int(opts["iterations"]), int(opts["patience"]), say)

    # 5. The calibration and its report.
    heldout_bases = {name: rms(e[1]) for name, e in errors.items()}
    report = {
        "fit_rms": rms(fit.final_errors(theta, x_fit, ref_fit)),
        "fit_rms_base": rms(errors[base][0]),
        "heldout_rms": rms(fit.final_errors(theta, x_val, ref_val)),
        "heldout_rms_base": heldout_bases[base],
        "heldout_rms_bases": heldout_bases,
        "heldout_loss": heldout_loss,
        "samples": {"fit": int(x_fit.shape[0]), "heldout": int(x_val.shape[0])},
        "iterations": accepted, "trace": trace,
        "model_calls": denoise.calls, "model_evaluations": denoise.rows,
        "seconds": round(time.perf_counter() - started, 3),
        "reference": {"rk4_steps": int(opts["reference_steps"]), "floor": floor},
        "options": {k: v for k, v in opts.items() if k != "batch_size"},
        "calibrated": bool(heldout_loss < 1),
    }
    fitted_on = {"steps": steps, "sigma_max": sigma_list[0], "sigma_min": sigma_list[-2],
                 "model_kind": model_kind(model), "sigmas": sigma_list,
                 "latent_shape": list(noise.shape[1:])}
    return fit.calibration(theta, fitted_on, report)
