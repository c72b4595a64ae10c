"""Levenberg-Marquardt on a calibration objective: the loop both fits share (the LML fit,
lml_core.objective.Fit, and the timestep-only fit, lml_core.sigma_fit.SigmaFit: anything with
``size``, ``plan``, ``loss`` and ``jacobian``), with held-out early stopping; and a
calibration's fits as candidates (``fitted``, ``scores``) and the race of its two LML fits
(``raced``)."""

from __future__ import annotations

import torch


def rms(errors) -> float:
    return float(errors.pow(2).mean().sqrt())


def theta_key(theta) -> bytes:
    """``theta`` as a dictionary key: its float64 bytes, -0.0 as 0.0."""
    return (theta.double() + 0.0).cpu().numpy().tobytes()


# Rows whose Jacobian is computed at once: the forked rollouts of every parameter live together,
# so a Jacobian on more rows (jacobian_rows 0: every fitting noise) is summed chunk by chunk
# into J^T J and J^T r, in the memory of this many rows (the default jacobian_rows' own).
JACOBIAN_CHUNK = 4


def normal_equations(fit, theta, x, reference, eps, rows, kept=None):
    """(J^T J, J^T r) of ``fit`` at ``theta`` on the fitting rows ``rows`` (a slice or index
    tensor), JACOBIAN_CHUNK rows at a time, on the CPU with theta: the same sums, the same
    model evaluations, and the memory of one chunk.  ``kept``: what the loss at ``theta``
    kept on ``rows`` (``fit.keeper(rows)``), which each chunk's Jacobian reuses."""
    index = torch.arange(x.shape[0])[rows]
    # One chunk: the rows as given (the default's path, as it always ran).
    chunks = [rows] if index.numel() <= JACOBIAN_CHUNK else index.split(JACOBIAN_CHUNK)
    positions = [slice(None)] if len(chunks) == 1 else torch.arange(index.numel()).split(
        JACOBIAN_CHUNK)
    jtj = gradient = None
    for chunk, at in zip(chunks, positions):
        reuse = {} if kept is None else {"kept": kept.part(at)}
        residual, jac = fit.jacobian(theta, x[chunk], reference.subset(chunk), eps, **reuse)
        # The P x P system lives on the CPU with theta; the rows stay on the model's device.
        part = (jac.T @ jac).cpu(), (jac.T @ residual).cpu()
        del jac, residual
        jtj, gradient = part if jtj is None else (jtj + part[0], gradient + part[1])
    return jtj, gradient


def jacobian_rows_at(iteration: int, rows: int, count: int):
    """The fitting rows iteration ``iteration``'s Jacobian is taken on: ``count`` of the
    ``rows``, the next ones in turn each iteration (all of them when count is 0 or >= rows)."""
    if not 0 < count < rows:
        return slice(None)
    return torch.arange(iteration * count, (iteration + 1) * count) % rows


def damped_step(system, gradient, held):
    """The Levenberg-Marquardt step -system^-1 gradient with the ``held`` parameters fixed
    (their rows and columns left out, their step 0)."""
    free = ~held
    delta = torch.zeros_like(gradient)
    delta[free] = -torch.linalg.solve(system[free][:, free], gradient[free])
    return delta


def pushed_past_bound(fit, theta, delta, eps):
    """Mask of the parameters that ``delta`` moves past a bound: moving one of them alone by
    at most ``eps`` (the finite-difference step) its way is infeasible already."""
    pushed = torch.zeros(fit.size, dtype=torch.bool)
    for p in torch.nonzero(delta).flatten().tolist():
        moved = theta.clone()
        moved[p] += float(delta[p].clamp(-eps, eps))
        pushed[p] = fit.plan(moved) is None
    return pushed


def levenberg_marquardt(fit, x, reference, heldout, regularization, eps,
                        iterations, patience, say, jacobian_rows=0, tolerance=0.0,
                        theta0=None, first=0, losses=None):
    """Levenberg-Marquardt on ``fit``'s objective (relative to the base's) + ``regularization
    * |theta|^2`` from theta = 0; ``heldout(theta)`` scores each accepted iterate and the best
    one is returned, with the number of accepted steps and the trace of (objective, held-out)
    ratios to the base's.

    The Jacobian (the fit's cost: a forked rollout per parameter) is taken on ``jacobian_rows``
    of the fitting rows, other ones each iteration, and scaled to all of them; every trial step
    is still judged on all the fitting rows, so the objective never rises.  Its memory is that
    of JACOBIAN_CHUNK rows at most (``normal_equations``).  The fit has converged, and stops,
    after two accepted steps in a row that each lower the objective by less than
    ``tolerance`` (relative).  ``theta0``,
    ``first``: go on from an earlier run's theta, as its iteration ``first`` (the ratios stay
    relative to theta = 0).  ``losses``: {theta's bytes: the fitting objective there}, kept
    by the caller across runs of the same fit and rows, so a run that goes on from another's
    theta does not roll out the base and that theta again.

    The rollout that judges a step on all the fitting rows keeps what the next Jacobian at
    that theta can reuse on its rows (``fit.keeper(rows)``, None: nothing): the LML fits'
    model calls, which that Jacobian's own rollout replays; a timestep-only fit's outcome,
    its residual.  Its model calls are not made twice (per iteration ``jacobian_rows`` x the
    steps fewer)."""
    losses = {} if losses is None else losses
    kept = {}  # the last rollout's keeper: {theta's bytes: what it kept on the next rows}

    def loss_at(theta, plan, next_rows=None):
        key = theta_key(theta)
        if key not in losses:
            keeper = None if next_rows is None else fit.keeper(next_rows)
            if keeper is None:
                losses[key] = fit.loss(plan, x, reference)
            else:
                losses[key] = fit.loss(plan, x, reference, keep=keeper)
                kept.clear()
                kept[key] = keeper
        return losses[key]

    def rows_of(iteration):
        return jacobian_rows_at(iteration, x.shape[0], jacobian_rows)

    theta = torch.zeros(fit.size, dtype=torch.float64)
    base_objective = loss_at(theta, fit.plan(theta), None if theta0 is not None else
                             rows_of(first))
    rows = x.numel()
    scale = max(base_objective, 1e-300) * rows

    def objective(value, theta):
        return value * rows / scale + regularization * float(theta @ theta)

    val_base = heldout(theta)
    current = base_objective
    if theta0 is not None:
        theta = theta0.clone()
        current = loss_at(theta, fit.plan(theta), rows_of(first))
    best_val, best_theta = heldout(theta), theta.clone()
    mu, stale, accepted, trace = 1e-2, 0, 0, []
    flat = 0  # accepted steps in a row that lowered the objective by less than tolerance
    identity = torch.eye(fit.size, dtype=torch.float64)
    for iteration in range(first, first + iterations):
        part = rows_of(iteration)
        sums = normal_equations(fit, theta, x, reference, eps, part,
                                kept.pop(theta_key(theta), None))
        kept.clear()
        # the part's sums, scaled to all the fitting rows
        share = x.shape[0] / torch.arange(x.shape[0])[part].numel()
        jtj = share * sums[0] / scale
        gradient = share * sums[1] / scale + regularization * theta
        diag = torch.diagonal(jtj).clamp(min=1e-12 * float(torch.diagonal(jtj).max()) + 1e-30)
        improved = False
        held = torch.zeros(fit.size, dtype=torch.bool)  # parameters held at a bound
        for _trial in range(10):  # raise mu until a step lowers the objective
            try:
                delta = damped_step(jtj + regularization * identity + mu * torch.diag(diag),
                                    gradient, held)
            except RuntimeError:
                mu *= 10
                continue
            plan = fit.plan(theta + delta)
            if plan is None:
                # A parameter at a bound (a timestep at the floor) that the step pushes past
                # it is held there, and the step solved again for the rest: a smaller step
                # would still push it past.  Otherwise the step is too long.
                pushed = pushed_past_bound(fit, theta, delta, eps) & ~held
                if pushed.any():
                    held |= pushed
                else:
                    mu *= 4
                continue
            value = loss_at(theta + delta, plan, rows_of(iteration + 1))
            before = objective(current, theta)
            after = objective(value, theta + delta)
            if after < before:
                flat = flat + 1 if before - after < tolerance * before else 0
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
        if flat >= 2:
            say(f"the objective fell by less than {tolerance:g} twice in a row; converged")
            break
    return best_theta, best_val / val_base, accepted, trace


# --------------------------------------------------------------------------------------------
# The fits of a calibration (``setup``: lml_core.calibrate.Setup) and which of them go on


def scores(setup, label, start, fit, theta, result=None) -> dict:
    """Fit, held-out (selection) and test RMS of ``fit`` at ``theta`` and at its start
    (theta = 0); the test RMS is None without test noise."""
    zero = torch.zeros(fit.size, dtype=torch.float64)
    heldout_loss, iterations, trace = result if result is not None else (1.0, 0, [])
    return {"label": label, "start": start, "fit": fit, "theta": theta,
            "fit_rms": rms(setup.errors(fit, theta, "fit")),
            "fit_rms_start": rms(setup.errors(fit, zero, "fit")),
            "heldout_rms": rms(setup.errors(fit, theta, "val")),
            "heldout_rms_start": rms(setup.errors(fit, zero, "val")),
            "test_rms": setup.test_rms(fit, theta),
            "heldout_loss": heldout_loss, "iterations": iterations, "trace": trace}


def fitted(setup, label, start, fit, start_errors, run=None) -> dict:
    """The scores of the fit of ``fit`` (``run``: a setup.fit result to go on from, or None:
    from its start), or of the start itself where the fit gained nothing on the held-out
    part."""
    if run is None:
        theta, heldout_loss, iterations, trace = setup.fit(fit, start_errors)
    else:
        done = run[2]
        theta, heldout_loss, iterations, trace = setup.fit(
            fit, start_errors, int(setup.opts["iterations"]) - done, run[0], done)
        if run[1] <= heldout_loss:  # the earlier run's best stands
            theta, heldout_loss = run[0], run[1]
        iterations, trace = done + iterations, run[3] + trace
    if heldout_loss >= 1:  # no gain on the held-out part: the start itself
        return scores(setup, start, start, fit, theta * 0)
    return scores(setup, label, start, fit, theta, (heldout_loss, iterations, trace))


# Below this many steps both LML fits run to the end: their iterations are cheap (a 4-step
# one costs about a third of a 10-step one), and there the start that leads after a few
# iterations (a built-in's steps) often ends behind a base start (digits network, NFE 4-5,
# 3 seeds: race 4 0.545 / 0.811 of the best pair at cfg 3 / 6 Karras 4 NFE, both fits to the
# end 0.494 / 0.754).
RACE_FROM_STEPS = 6


def raced(setup, starts: dict, objectives: dict, labels: list) -> list:
    """(label, a short fit's result or None) of the LML starts worth the whole fit
    (``objectives``: each start's per-sample objective on the fitting noise): with
    more than one, at least RACE_FROM_STEPS steps and the option ``race`` > 0, each gets
    ``race`` iterations and only the one lowest on the held-out noise goes on; else all of
    them, from their starts."""
    race = int(setup.opts["race"])
    if (len(labels) < 2 or race <= 0 or race >= int(setup.opts["iterations"])
            or setup.steps < RACE_FROM_STEPS):
        return [(label, None) for label in labels]
    runs = {label: setup.fit(starts[label], objectives[label], race) for label in labels}
    loss = {label: setup.heldout_loss(starts[label], runs[label][0]) for label in labels}
    best = min(labels, key=loss.get)
    setup.say("LML fits after " + str(race) + " iterations (held-out loss): " + ", ".join(
        f"{label} {loss[label]:.4g}" for label in labels) + f"; going on from {best}")
    return [(best, runs[best])]
