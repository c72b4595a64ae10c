"""The field a calibration starts from: every start (an LML base or a built-in sampler on
each schedule) measured on the fitting noise, ranked on a few noises first so that only the
finalists cost the rest; and the planned model evaluations of the whole fit."""

from __future__ import annotations

import torch

from .linear_fit import LinearFit
from .objective import Fit, robust_loss
from .projection import identified, linear_map, same_map
from .sigma_fit import SigmaFit

# lml_core's own samplers among the starts (the others are built-in pairs)
LML_FITS = (Fit, LinearFit)


def parameter_count(steps: int, history: int, move_timesteps: bool) -> int:
    return (steps - 1 if move_timesteps and steps >= 2 else 0) + sum(
        min(i + 1, history) for i in range(steps))


def planned_evaluations(setup, n_lml, n_builtin, move_timesteps, sigma_fits, kinds=2,
                        lml_fits=1) -> int:
    """About how many per-row model evaluations the fit makes (for a progress bar; it may
    stop early): the reference, the field (``n_lml`` LML and ``n_builtin`` built-in starts,
    of ``kinds`` kinds), ``lml_fits`` LML fits (if any LML start) and ``sigma_fits``
    timestep fits."""
    opts, steps = setup.opts, setup.steps
    size = parameter_count(steps, int(opts["history"]), move_timesteps)
    fit, val = setup.x_fit.shape[0], setup.x_val.shape[0]
    total = fit + val + setup.x_test.shape[0]
    jac = int(opts["jacobian_rows"]) if 0 < int(opts["jacobian_rows"]) < fit else fit
    field, alive = 0, n_lml + n_builtin
    for first, last, survivors in screening_stages(int(opts["screen_rows"]), fit,
                                                   int(opts["finalists"])):
        field += steps * alive * (last - first)
        alive = alive if survivors is None else min(alive, kinds * survivors)  # each kind
    judged = 2 * steps * fit + steps * val  # per iteration: trial steps and the held-out part
    lml = (steps + size * steps // 2) * jac + judged if n_lml else 0
    timesteps = sigma_fits * ((steps - 1) * steps * jac + judged)
    lead = 1 if setup.flow else 0  # the reference's first step of a flow start (sigma ~1)
    return ((int(opts["reference_steps"]) + lead + 1) * total + field
            + int(opts["iterations"]) * (lml_fits * lml + timesteps) + 8 * steps * total)


def screening_stages(screen: int, rows: int, keep: int) -> list:
    """measured_starts' successive halving as (first row, last row, survivors of each kind
    after it, None at the end): every start on the first quarter of ``screen`` fitting rows,
    the best 4 x ``keep`` of each kind on the second quarter, the best 2 x ``keep`` on the
    second half, the ``keep`` best on the rest; all the rows at once when ``screen`` is 0 or
    not below ``rows``.  A stage may be empty (screen < 4): its cut still applies."""
    if not 0 < screen < rows:
        return [(0, rows, None)]
    quarter, half = max(1, screen // 4), max(1, screen // 2)
    return [(0, quarter, 4 * keep), (quarter, half, 2 * keep), (half, screen, keep),
            (screen, rows, None)]


def twin_starts(starts: dict, model) -> dict:
    """{LML start: built-in pair} where the two are one sampler: the same linear map of the
    noise and the model's outputs (lml_core.projection.linear_map) on the same schedule, as
    LML's euler, ipndm and ipndm_v bases and its starts from deis's or gradient_estimation's
    own steps are, and every LinearFit start (the pair's own linear map); the field runs the
    pair only and gives its twin the same errors."""
    twins = {}
    for label, fit in starts.items():
        if isinstance(fit, LinearFit):
            pair = f"{lml_start_name(label)} + {label.split(' + ', 1)[1]}"
            if pair in starts:
                twins[label] = pair
    lml = {label: fit for label, fit in starts.items() if isinstance(fit, Fit)}
    if not lml:
        return twins
    pairs = {}  # schedule: [(pair, its map)] (a sampler of more calls a step has no map)
    for label, fit in starts.items():
        if isinstance(fit, SigmaFit):
            found = identified(fit.sampler, model, fit.sigmas)
            if found is not None:
                pairs.setdefault(label.split(" + ", 1)[1], []).append((label, found))
    for label, fit in lml.items():
        candidates = pairs.get(label.split(" + ", 1)[1], [])
        if not candidates:
            continue
        plan = fit.plan(torch.zeros(fit.size, dtype=torch.float64))
        lml_map = linear_map(lambda probe, x, fit=fit, plan=plan: fit.rollout(
            plan, x, denoise=probe)[0], plan[0])
        twin = next((pair for pair, found in candidates if same_map(lml_map, found)), None)
        if twin is not None:
            twins[label] = twin
    return twins


def start_errors(setup, starts: dict, x, reference, steps: int, one_call: bool,
                 twins=None) -> dict:
    """{label: (per-sample final error, per-sample objective) on ``x``} (``rollout_errors``)
    of every start that runs there (a built-in that fails, or makes more than one model call
    per step where ``one_call``, is left out; a start whose twin (``twin_starts``) ran gets its
    errors)."""
    errors, twins = {}, twins or {}
    for label in sorted(starts, key=lambda label: label in twins):  # the twins last
        fit = starts[label]
        if twins.get(label) in errors:
            errors[label] = errors[twins[label]]
            continue
        before = setup.counted.rows
        try:
            errors[label] = fit.rollout_errors(torch.zeros(fit.size, dtype=torch.float64), x,
                                               reference)
        except (RuntimeError, ValueError, ZeroDivisionError) as error:
            if isinstance(fit, LML_FITS):  # lml_core's own sampler: a real error
                raise
            setup.say(f"{label}: cannot run here ({error}); left out")
            continue
        if one_call and setup.counted.rows - before > steps * x.shape[0]:
            setup.say(f"{label}: more than one model call per step; left out")
            del errors[label]
    return errors


def lml_start_name(label: str) -> str | None:
    """The base or built-in an LML start's label names ("deis" for "lml(deis) + kl_optimal";
    calibrate labels its starts so), None for any other label (a built-in pair's)."""
    return label[4:label.index(")")] if label.startswith("lml(") and ")" in label else None


def start_kind(fit) -> str:
    """"lml" (an LML base), "lml from a built-in" (the LML sampler on a built-in's steps) or
    "built-in" (a sampler as it is)."""
    if isinstance(fit, LinearFit):
        return "lml from a built-in"
    if not isinstance(fit, Fit):
        return "built-in"
    return "lml" if fit.start is None else "lml from a built-in"


def best_of_each_kind(errors: dict, keep: int, kind) -> list:
    """The ``keep`` best starts of each kind (``kind(label)``) in ``errors`` ({label:
    per-sample objective}) by robust loss (scaled by the best start's median)."""
    typical = min(float(e.median()) for e in errors.values())
    ranked = sorted(errors, key=lambda label: robust_loss(errors[label], typical))
    kinds = dict.fromkeys(kind(label) for label in ranked)
    return [label for k in kinds for label in [r for r in ranked if kind(r) == k][:keep]]


def measured_starts(setup, starts: dict, steps: int, one_call: bool, twins=None) -> dict:
    """{label: (per-sample final error, per-sample objective) on the fitting noise} of the
    starts worth fitting, by successive halving over ``screen_rows`` fitting noises
    (``screening_stages``; kinds: LML start, built-in pair; ranked by the objective): a start
    far behind on a few noises is not worth the rest."""
    screen, keep = int(setup.opts["screen_rows"]), int(setup.opts["finalists"])
    errors, alive = {}, list(starts)
    for first, last, survivors in screening_stages(screen, setup.x_fit.shape[0], keep):
        if last > first:
            part = slice(first, last)
            more = start_errors(setup, {label: starts[label] for label in alive},
                                setup.x_fit[part], setup.ref_fit.subset(part), steps, one_call,
                                twins)
            errors = {label: more[label] if label not in errors else tuple(
                torch.cat(pair) for pair in zip(errors[label], more[label]))
                for label in alive if label in more}
        if not errors:
            return errors
        if survivors is not None:
            alive = best_of_each_kind({label: e[1] for label, e in errors.items()}, survivors,
                                      lambda label: start_kind(starts[label]))
            if survivors == keep:
                setup.say(f"field: {len(starts)} starts ranked on {last} noises in "
                          f"stages; finalists " + ", ".join(alive))
    return errors
