"""What a calibration minimises: the parameters (``Fit``: timestep shifts in log-SNR, then the
step corrections), the whole rollout they give, its residual against the ``Reference``, the
Jacobian by forked finite differences, and the robust per-noise weights."""

from __future__ import annotations

import math

import torch

from .adaptive import half_log_snr
from .calibration import Calibration, base_coefficients, combined, multistep, multistep_run
from .calibration_text import MAX_CORRECTION
from .reference import Reference, sigma_of

# The finite-difference step by the precision the model computes in: a column differences two
# rollouts, each carrying the model's rounding, so the step grows with the unit roundoff
# (about as its cube root).  float16 / bfloat16 measured on the digits network (NFE 5 and 8,
# autocast, docs/bench/gpu): 1e-2 left 2-4x of float32's gain unused, these recover it.
FD_STEPS = {torch.float64: 1e-4, torch.float32: 1e-2, torch.float16: 0.1, torch.bfloat16: 0.2}


def checked_dtype(model_dtype) -> torch.dtype:
    """``model_dtype`` (a floating torch.dtype or its name: "float16", ...) as a torch.dtype."""
    dtype = getattr(torch, model_dtype, None) if isinstance(model_dtype, str) else model_dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"model_dtype must be a floating torch dtype or its name (float32, "
                         f"float16, bfloat16, ...), got {model_dtype!r}")
    return dtype


def dtype_name(model_dtype) -> str:
    return str(checked_dtype(model_dtype)).removeprefix("torch.")


def fd_step_for(model_dtype) -> float:
    """The default finite-difference step for a model computing in ``model_dtype``."""
    dtype = checked_dtype(model_dtype)
    return FD_STEPS.get(dtype, FD_STEPS[torch.bfloat16])  # other 8/16-bit types: the coarsest


PROBE = 4096  # state coordinates per sample the trajectory term reads (a fixed subset)


def rollout_residual(outcome, sig, reference: Reference, trajectory: float, flow: bool):
    """The residual a fit minimises for a rollout's ``outcome`` (the final sample, the states
    x_1..x_{N-1} at the sampler's sigmas ``sig``): the final sample against the reference's,
    then, with weight ``trajectory``, each state against the reference there, weighted by how
    much an error there moves the final sample (data scale / sqrt(sigma^2 + alpha^2 scale^2)),
    all of them together ``trajectory`` times the final sample's weight."""
    final, states = outcome
    parts = [reference.weigh(final - reference.final).reshape(-1).to(torch.float64)]
    if trajectory <= 0 or not states:
        return parts[0]
    rows, width = states[0].shape[0], states[0][0].numel()
    probe = slice(None) if width <= PROBE else torch.linspace(
        0, width - 1, PROBE, device=states[0].device).long()
    share = math.sqrt(trajectory / len(states) * width / min(width, PROBE))
    scale = reference.scale
    for n, state in enumerate(states, start=1):
        alpha = 1 - sig[n] if flow else 1.0
        weight = share * scale / math.sqrt(sig[n] ** 2 + (alpha * scale) ** 2)
        diff = reference.weigh(state - reference.at(sig[n])).reshape(rows, -1)[:, probe]
        parts.append(weight * diff.reshape(-1).to(torch.float64))
    return torch.cat(parts)


def per_sample_objective(outcome, sig, reference: Reference, trajectory: float, flow: bool):
    """Each noise's share of the objective, as an RMS (the final sample's RMS where
    ``trajectory`` is 0): its part of rollout_residual squared, summed, over the sample's size,
    without the fit's per-sample weights.  What calibrate ranks starts and chooses by: a
    schedule that sends more noises to another mode strays further on the way for all of them,
    which a few noises show where their final samples (mostly none in another mode) do not
    (docs/calibration_options.md)."""
    final, states = outcome
    r = rollout_residual(outcome, sig, reference, trajectory, flow)
    rows, width = final.shape[0], final[0].numel()
    total = r[:rows * width].reshape(rows, -1).pow(2).sum(1)
    if r.numel() > rows * width:  # the states: len(states) blocks of rows x probed values
        total = total + r[rows * width:].reshape(len(states), rows, -1).pow(2).sum((0, 2))
    out = (total / width).sqrt()
    return out if reference.weights is None else out / reference.weights.to(out)


def moved_schedule(fit, values) -> list[float] | None:
    """``fit.sigmas`` with s_k (k in ``fit.moved``) shifted by values[p] in log-SNR (``fit.t``
    the start's); None where they are not strictly decreasing or fall below ``fit.floor``."""
    sig = list(fit.sigmas)
    for p, k in enumerate(fit.moved):
        sig[k] = sigma_of(fit.t[k] + values[p], fit.flow)
    nonzero = sig[:-1]
    if any(a <= b for a, b in zip(nonzero[:-1], nonzero[1:])) or (
            nonzero[-1] < fit.floor * (1 - 1e-9)):
        return None
    return sig


def per_sample_rms(final, reference: Reference):
    """Per-sample RMS of a final sample against the reference's."""
    return (final.to(torch.float64) - reference.final.to(torch.float64)).reshape(
        final.shape[0], -1).pow(2).mean(1).sqrt()


def difference_column(fit, theta, p: int, eps: float, residual, residual_at):
    """Jacobian column p by a forward difference: (residual_at(plan of theta + eps e_p) -
    residual) / eps, with -eps where +eps is infeasible (``fit.plan`` None), zeros where both
    are."""
    for step in (eps, -eps):
        moved = theta.clone()
        moved[p] += step
        plan = fit.plan(moved)
        if plan is not None:
            return (residual_at(plan) - residual) / step
    return torch.zeros_like(residual)


class Recorder:
    """The model as ``denoise(x, sigma)``, keeping the outputs of the rows ``rows`` (an index
    or slice of x's rows) of every call: a Jacobian at the same plan on those rows replays
    them (``part``: a Replay) instead of calling the model for its base rollout again."""

    def __init__(self, denoise, rows):
        self.denoise, self.rows, self.calls = denoise, rows, []

    def __call__(self, x, sigma: float):
        out = self.denoise(x, sigma)
        self.calls.append((sigma, out[self.rows]))
        return out

    def part(self, positions=slice(None)):
        """The Replay of the recorded rows at ``positions`` (a chunk of them)."""
        return Replay(self.calls, positions)


class Replay:
    """A Recorder's calls, in order, in place of the model (``positions``: the rows of the
    recorded ones this rollout runs).  A call that is not the next recorded one (another sigma
    or shape: another plan or rows) is a RuntimeError, never a wrong output."""

    def __init__(self, calls, positions=slice(None)):
        self.calls, self.positions = iter(calls), positions

    def __call__(self, x, sigma: float):
        recorded_sigma, out = next(self.calls, (None, None))
        if out is not None:
            out = out[self.positions]
        if out is None or recorded_sigma != sigma or out.shape != x.shape:
            raise RuntimeError(f"calibrate: a replayed rollout called the model at sigma "
                               f"{sigma:.6g} with rows {list(x.shape)}, not as recorded")
        return out


class RolloutObjective:
    """The objective of a fit whose plans are (sigmas, ...) and whose ``rollout(plan, x)`` is
    (the final sample, the states x_1..x_{N-1}): Fit's and LinearFit's.  Needs ``trajectory``,
    ``flow``, ``plan``, ``rollout`` and ``denoise``.  What a loss keeps for a Jacobian at
    the same plan (``keeper``) is its model calls on the Jacobian's rows: the Jacobian's
    rollout at the plan itself replays them (``kept``), its forks call the model."""

    def residual(self, outcome, sig, reference: Reference):
        return rollout_residual(outcome, sig, reference, self.trajectory, self.flow)

    def keeper(self, rows):
        return Recorder(self.denoise, rows)

    def loss(self, plan, x, reference, keep=None) -> float:
        """The objective residual's mean square (``keep``: a ``keeper``, which records)."""
        outcome = self.rollout(plan, x, denoise=keep)
        r = self.residual(outcome, plan[0], reference)
        return float((r * r).sum()) / outcome[0].numel()

    def final_errors(self, theta, x, reference):
        """Per-sample RMS of the final sample against the reference."""
        return per_sample_rms(self.rollout(self.plan(theta), x)[0], reference)

    def rollout_errors(self, theta, x, reference):
        """(per-sample RMS of the final sample, per-sample objective: per_sample_objective) of
        one rollout at ``theta``."""
        plan = self.plan(theta)
        outcome = self.rollout(plan, x)
        return (per_sample_rms(outcome[0], reference),
                per_sample_objective(outcome, plan[0], reference, self.trajectory, self.flow))


class Fit(RolloutObjective):
    """The parameter layout theta = (timestep shifts in log-SNR, then the corrections c_{i,j}
    step by step), rollouts of it, and the residual the fit minimises: the final sample's
    distance to the reference plus, with weight ``trajectory``, the distance of the states on
    the way (at the sampler's own sigmas, each weighted by how much an error there moves the
    final sample: data scale / sqrt(sigma^2 + alpha^2 scale^2)).  The second term keeps the
    fit from steering off the trajectory early and back later: a noise near a decision
    boundary would not come back (a different mode), and the few fitting noises rarely show
    that."""

    def __init__(self, denoise, sigmas, base, history, move_timesteps, flow, floor,
                 trajectory=0.0, start=None):
        self.denoise, self.base, self.flow, self.floor = denoise, base, flow, floor
        # ``start(sigmas)``: a coefficient table w_{i,.} in place of the base's (lml_core.
        # projection.BuiltinSteps: a built-in sampler's steps on those timesteps, or None);
        # the calibration saves it as euler + corrections.
        self.start = start
        self.sigmas = list(sigmas)
        self.steps = len(sigmas) - 1
        self.trajectory = trajectory
        self.t = [half_log_snr(s, flow) for s in self.sigmas[:-1]]
        # s_1 .. s_{N-1}, the last nonzero one included: each may move either way while the
        # schedule stays decreasing and above the floor (the model's sigma_min, where the
        # reference ends), so a fit started at the floor can still raise its last sigma.
        self.moved = list(range(1, self.steps)) if move_timesteps else []
        self.n_time = len(self.moved)
        self.slots = [min(i + 1, history) for i in range(self.steps)]
        self.offsets = [self.n_time + sum(self.slots[:i]) for i in range(self.steps)]
        self.size = self.n_time + sum(self.slots)
        # The first step each parameter changes: s_k is the target of step k - 1.
        self.first_step = [k - 1 for k in self.moved] + [
            i for i in range(self.steps) for _ in range(self.slots[i])]
        self.keep = max(max(self.slots), 4 if base != "euler" and start is None else 1)

    def plan(self, theta):
        """(sigmas, coefficient lists) for ``theta``; None where the timesteps are not strictly
        decreasing or fall below the floor, or a correction is beyond MAX_CORRECTION."""
        values = theta.tolist()
        sig = moved_schedule(self, values)
        if sig is None:
            return None
        # Corrections past MAX_CORRECTION are not a calibration (one could not be saved).
        if any(abs(v) > MAX_CORRECTION for v in values[self.n_time:]):
            return None
        table = self.start(sig) if self.start is not None else None
        if self.start is not None and table is None:
            return None
        coefficients = [combined(table[i] if table else base_coefficients(self.base, sig, i),
                                 values[self.offsets[i]:self.offsets[i] + self.slots[i]])
                        for i in range(self.steps)]
        if self.start is not None and any(abs(v) > MAX_CORRECTION for c in coefficients
                                          for v in combined(c, [-1.0])):
            return None
        return sig, coefficients

    def calibration(self, theta, fitted_on, report) -> Calibration:
        sig, coefficients = self.plan(theta)
        if self.start is not None:  # euler's coefficient is 1: the rest is the correction
            return Calibration(base="euler", sigmas=sig, fitted_on=fitted_on, report=report,
                               corrections=[combined(c, [-1.0]) for c in coefficients])
        values = theta.tolist()
        corrections = [values[self.offsets[i]:self.offsets[i] + self.slots[i]]
                       for i in range(self.steps)]
        return Calibration(base=self.base, sigmas=sig, corrections=corrections,
                           fitted_on=fitted_on, report=report)

    def rollout(self, plan, x, start=0, history=(), states=(), denoise=None):
        """(the final sample, the states x_1..x_{N-1}) of ``plan`` from ``x`` at step ``start``
        (``history``, ``states``: the directions and states before it; ``denoise``: another
        model than the fit's, a probe)."""
        sig, coefficients = plan
        states, final = list(states), x
        for i, _x, _denoised, _history, final in multistep_run(
                denoise or self.denoise, x, sig, coefficients, self.keep, start, history):
            if i < self.steps - 1:
                states.append(final)
        return final, states

    def jacobian(self, theta, x, reference, eps, kept=None):
        """(residual at ``theta``, Jacobian [rows, P]) by forward differences (-eps where +eps
        is infeasible).  Each column's rollout forks from the trajectory at the first step its
        parameter changes and reuses that step's model call; ``kept``: the model calls of the
        rollout at ``theta`` on these rows (a Replay), the forks call the model."""
        sig, coefficients = self.plan(theta)
        columns = [None] * self.size
        steps = [eps] * self.size
        forks = []
        states, final = [], x
        for i, x_i, _denoised, history, final in multistep_run(kept or self.denoise, x, sig,
                                                               coefficients, self.keep):
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
                x_fork = multistep(x_i, history, fork_plan[0], fork_plan[1][i], i)
                fork_states = states + ([x_fork] if i < self.steps - 1 else [])
                outcome = self.rollout(fork_plan, x_fork, i + 1, history, fork_states)
                forks.append((p, self.residual(outcome, fork_plan[0], reference)))
            if i < self.steps - 1:
                states.append(final)
        residual = self.residual((final, states), sig, reference)
        for p, fork in forks:
            columns[p] = (fork - residual) / steps[p]
        jac = torch.stack([torch.zeros_like(residual) if c is None else c for c in columns], 1)
        return residual, jac


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
