"""The field a calibration starts from: every start (an LML base or a built-in sampler on
each schedule) measured on the fitting noise, ranked on a few noises first so that only the
finalists cost the rest; and the planned model evaluations of the whole fit."""

from __future__ import annotations

import torch

from .objective import Fit, robust_loss


def planned_evaluations(setup, n_lml, n_builtin, size, sigma_fits) -> int:
    """About how many per-row model evaluations the fit makes (for a progress bar; it may
    stop early): the reference, the field (``n_lml`` LML and ``n_builtin`` built-in starts),
    the LML fit of ``size`` parameters (if any LML start) and ``sigma_fits`` timestep fits."""
    opts, steps = setup.opts, setup.steps
    fit, val = setup.x_fit.shape[0], setup.x_val.shape[0]
    total = fit + val + setup.x_test.shape[0]
    screen = int(opts["screen_rows"]) if 0 < int(opts["screen_rows"]) < fit else fit
    jac = int(opts["jacobian_rows"]) if 0 < int(opts["jacobian_rows"]) < fit else fit
    field = (n_lml + n_builtin) * steps * screen + 2 * int(opts["finalists"]) * steps * (
        fit - screen)
    judged = 2 * steps * fit + steps * val  # per iteration: trial steps and the held-out part
    lml = (steps + size * steps // 2) * jac + judged if n_lml else 0
    timesteps = sigma_fits * ((steps - 1) * steps * jac + judged)
    return ((4 * (int(opts["reference_steps"]) + 4) + 1) * total + field
            + int(opts["iterations"]) * (lml + timesteps) + 8 * steps * total)


def start_errors(setup, starts: dict, x, reference, steps: int, one_call: bool) -> dict:
    """{label: per-sample final error on ``x``} of every start that runs there (a built-in
    that fails, or makes more than one model call per step where ``one_call``, is left out)."""
    errors = {}
    for label, fit in starts.items():
        before = setup.counted.rows
        try:
            errors[label] = fit.final_errors(torch.zeros(fit.size, dtype=torch.float64), x,
                                             reference)
        except (RuntimeError, ValueError, ZeroDivisionError) as error:
            if isinstance(fit, Fit):  # lml_core's own sampler: a real error
                raise
            setup.say(f"{label}: cannot run here ({error}); left out")
            continue
        if one_call and setup.counted.rows - before > steps * x.shape[0]:
            setup.say(f"{label}: more than one model call per step; left out")
            del errors[label]
    return errors


def measured_starts(setup, starts: dict, steps: int, one_call: bool) -> dict:
    """{label: per-sample error on the fitting noise} of the starts worth fitting: the whole
    field is ranked on the first ``screen_rows`` fitting noises (a pair far behind there is
    not worth the rest), and the ``finalists`` best of each kind (LML start, built-in pair)
    are measured on the rest too."""
    rows = setup.x_fit.shape[0]
    screen = int(setup.opts["screen_rows"])
    if not 0 < screen < rows:
        return start_errors(setup, starts, setup.x_fit, setup.ref_fit, steps, one_call)
    head, rest = slice(0, screen), slice(screen, rows)
    errors = start_errors(setup, starts, setup.x_fit[head], setup.ref_fit.subset(head), steps,
                          one_call)
    if not errors:
        return errors
    typical = min(float(e.median()) for e in errors.values())
    ranked = sorted(errors, key=lambda label: robust_loss(errors[label], typical))
    keep = int(setup.opts["finalists"])
    finalists = ([label for label in ranked if label.startswith("lml(")][:keep]
                 + [label for label in ranked if not label.startswith("lml(")][:keep])
    setup.say(f"field: {len(errors)} starts ranked on {screen} noises; finalists "
              + ", ".join(finalists))
    x_rest, ref_rest = setup.x_fit[rest], setup.ref_fit.subset(rest)
    out = {}
    for label in finalists:
        more = start_errors(setup, {label: starts[label]}, x_rest, ref_rest, steps, one_call)
        if label in more:
            out[label] = torch.cat([errors[label], more[label]])
    return out
