"""Timesteps fitted for any k-diffusion sampler: the objective of ``calibrate_sigmas`` and of
calibrate's timestep-only candidates.

The sampler is a black box ``sampler(model, x, sigmas, extra_args=..., disable=True)`` (a host
function such as ComfyUI's ``sample_dpmpp_2m``); the parameters are shifts in log-SNR of its
timesteps s_1 .. s_{N-1} (s_0 and s_N = 0 fixed), each free to move either way while the
schedule stays strictly decreasing and above the reference's floor (the model's sigma_min).
The residual is the final sample's distance to the converged reference (the whole rollout)
and, with weight ``trajectory``, the states on the way (as the LML fit's, lml_core.objective:
the inputs of the sampler's model calls at its own sigmas); each Jacobian column is one more
rollout, so an iteration costs N rollouts.
"""

from __future__ import annotations

import torch

from .adaptive import half_log_snr
from .objective import (
    difference_column,
    moved_schedule,
    per_sample_objective,
    per_sample_rms,
    rollout_residual,
)
from .reference import Reference


class CountedModel:
    """The sampler's model with its per-row evaluations counted and reported to ``on_call``,
    its output in the dtype of the state it was given (a model that computes in float16 must
    not make a host sampler's arithmetic float16: dpmpp_2m's history is the model's output);
    every other attribute is the model's own (host samplers read ``model.inner_model...``)."""

    def __init__(self, model, on_call=None):
        self._model, self._on_call = model, on_call
        self.rows = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, x, sigma, **extra_args):
        self.rows += x.shape[0]
        if self._on_call is not None:
            self._on_call()
        return self._model(x, sigma, **extra_args).to(x.dtype)


class StateRecorder:
    """The sampler's model, keeping the state it is called at on each of ``nodes`` (the
    schedule's sigmas between the first and the last): a sampler calls its model at every
    sigma of its schedule but the last, on the state there (a sampler of two calls a step calls
    it again at the next sigma on a predicted state; the later call, the step's state, wins)."""

    def __init__(self, model, nodes):
        self._model, self._nodes = model, list(nodes)
        self.found = [None] * len(self._nodes)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, x, sigma, **extra_args):
        value = float(sigma.reshape(-1)[0]) if torch.is_tensor(sigma) else float(sigma)
        for n, node in enumerate(self._nodes):
            if abs(value - node) <= 1e-5 * node:
                self.found[n] = x.clone()  # a sampler may update its state in place
        return self._model(x, sigma, **extra_args)

    def states(self, like):
        """The states found, a zero state (no residual, no derivative) where none was."""
        return [torch.zeros_like(like) if s is None else s.to(like.dtype) for s in self.found]


def run_sampler(sampler, model, x, sigmas: list[float], extra_args, batch_size=None,
                states=False):
    """The final sample of ``sampler`` on ``sigmas`` (a fresh tensor each run: some host
    samplers edit their sigmas in place), in x's dtype, ``batch_size`` rows at a time; with
    ``states``: (the final sample, [the state at each of sigmas[1:-1]])."""
    finals, found = [], []
    for part in ([x] if not batch_size else torch.split(x, batch_size)):
        tensor = torch.tensor(sigmas, dtype=x.dtype, device=x.device)
        recorder = StateRecorder(model, tensor[1:-1].tolist()) if states else model
        finals.append(sampler(recorder, part.clone(), tensor,
                              extra_args=dict(extra_args or {}), disable=True))
        if states:
            found.append(recorder.states(part))
    out = torch.cat(finals)
    if not torch.isfinite(out).all():
        raise FloatingPointError("calibrate: a sampler returned NaN or inf on the calibration "
                                 "noise")
    if not states:
        return out.to(x.dtype)
    return out.to(x.dtype), [torch.cat([f[n] for f in found]) for n in range(len(sigmas) - 2)]


class OutcomeKeeper:
    """What SigmaFit's loss keeps for a Jacobian at the same plan on the rows ``rows``: its
    outcome there (the final sample, the states); the Jacobian's residual at the plan is that
    outcome's, so only its columns run the sampler."""

    def __init__(self, rows):
        self.rows, self.outcome = rows, None

    def keep(self, outcome):
        final, states = outcome
        self.outcome = final[self.rows], [state[self.rows] for state in states]

    def part(self, positions=slice(None)):
        """The kept outcome of the rows at ``positions`` (a chunk of them)."""
        final, states = self.outcome
        return final[positions], [state[positions] for state in states]


class SigmaFit:
    """The timesteps of one sampler as parameters theta (log-SNR shifts of s_1..s_{N-1}),
    with the interface the Levenberg-Marquardt driver uses (size, plan, loss, rollout_errors,
    jacobian)."""

    def __init__(self, sampler, model, sigmas, flow, floor, extra_args=None,
                 move_timesteps=True, batch_size=None, trajectory=0.0):
        self.sampler, self.model, self.flow, self.floor = sampler, model, flow, floor
        self.batch_size = batch_size
        self.trajectory = trajectory
        self.extra_args = extra_args or {}
        self.sigmas = list(sigmas)
        self.steps = len(self.sigmas) - 1
        self.t = [half_log_snr(s, flow) for s in self.sigmas[:-1]]
        self.moved = list(range(1, self.steps)) if move_timesteps else []
        self.size = len(self.moved)

    def plan(self, theta):
        """The sigmas for ``theta``; None where they are not strictly decreasing or fall
        below the floor."""
        return moved_schedule(self, theta.tolist())

    def final(self, plan, x):
        return run_sampler(self.sampler, self.model, x, plan, self.extra_args, self.batch_size)

    def outcome(self, plan, x):
        """(the final sample, the states on the way: none without the trajectory term)."""
        if self.trajectory <= 0:
            return self.final(plan, x), []
        return run_sampler(self.sampler, self.model, x, plan, self.extra_args, self.batch_size,
                           states=True)

    def residual(self, outcome, sig, reference: Reference):
        return rollout_residual(outcome, sig, reference, self.trajectory, self.flow)

    def keeper(self, rows):
        return OutcomeKeeper(rows)

    def loss(self, plan, x, reference, keep=None) -> float:
        """The objective residual's mean square (``keep``: a ``keeper``, which keeps the
        outcome)."""
        outcome = self.outcome(plan, x)
        if keep is not None:
            keep.keep(outcome)
        r = self.residual(outcome, plan, reference)
        return float((r * r).sum()) / x.numel()

    def final_errors(self, theta, x, reference):
        """Per-sample RMS of the final sample against the reference."""
        return per_sample_rms(self.final(self.plan(theta), x), reference)

    def rollout_errors(self, theta, x, reference):
        """(per-sample RMS of the final sample, per-sample objective: objective.
        per_sample_objective) of one run at ``theta``."""
        plan = self.plan(theta)
        outcome = self.outcome(plan, x)
        return (per_sample_rms(outcome[0], reference),
                per_sample_objective(outcome, plan, reference, self.trajectory, self.flow))

    def jacobian(self, theta, x, reference, eps, kept=None):
        """(residual at ``theta``, Jacobian [rows, P]) by forward differences (-eps where +eps
        is infeasible; a zero column where both are); ``kept``: the outcome at ``theta`` on
        these rows (OutcomeKeeper.part), else the sampler runs there."""
        plan = self.plan(theta)
        outcome = kept if kept is not None else self.outcome(plan, x)
        residual = self.residual(outcome, plan, reference)
        columns = [difference_column(self, theta, p, eps, residual, lambda moved: self.residual(
            self.outcome(moved, x), moved, reference)) for p in range(self.size)]
        return residual, torch.stack(columns, 1) if columns else residual[:, None] * 0
