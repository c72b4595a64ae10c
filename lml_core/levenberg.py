"""Levenberg-Marquardt on a calibration objective: the loop both fits share (the LML fit,
lml_core.objective.Fit, and the timestep-only fit, lml_core.sigma_fit.SigmaFit: anything with
``size``, ``plan``, ``loss`` and ``jacobian``), with held-out early stopping."""

from __future__ import annotations

import torch


def rms(errors) -> float:
    return float(errors.pow(2).mean().sqrt())


def levenberg_marquardt(fit, x, reference, heldout, regularization, eps,
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
