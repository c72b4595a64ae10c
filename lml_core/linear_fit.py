"""The LML fit started from a built-in sampler's own steps, on that sampler's exact linear map.

A deterministic sampler with one model call per step is linear in the model's outputs: its
state after step k is x_{k+1} = r_{k,0} x_0 + sum_{m<=k} r_{k,m+1} D_m, D_m = D(x_m, s_m)
(lml_core.projection.identified reads the rows r off a probe run).  ``LinearFit`` fits
corrections on those rows from the sampler's rows at the fitted timesteps, so the start is the
sampler itself exactly (uni_pc's corrector and dpmpp_2m's exponential steps included, which the
LML multistep form only approximates: lml_core.projection), and saves the corrected rows as a
LINEAR_SAMPLER calibration (lml_core.calibration.linear_state).

The corrections of state k + 1 are free on its coefficient of x_0 (in units of 1 / s_0: x_0 is
noise of scale s_0, so a correction of 1 adds noise of scale 1) and on its coefficients of the
last ``history`` outputs D_k, D_{k-1}, ..: the rows need not sum to 1, as every consistent
sampler's and the LML multistep form's do, so a step may also scale the denoised outputs and
add noise.  With the timesteps (log-SNR shifts of s_1 .. s_{N-1}, as lml_core.objective.Fit)
they are theta; the residual and loss are Fit's.

calibrate uses it with the option ``linear_fits`` (on by default since the trajectory weight
0.3: docs/bench/calibrated.md).  Against the projection, at trajectory weight 1,
same benchmark and noise (docs/bench/options_linear_*.md, 3 calibration seeds): the digits
network 0.357 -> 0.344 of the best pair (cfg 6 0.448 -> 0.416), the exact mixtures
0.798 -> 0.834.  What gains on the digits is that freedom, not the exact start: with LML's own
consistent directions (x_m - D_m) in place of the free output columns, or without the x_0
column, or without it in the final row, the digits did no better than the projection and the
mixtures worse (digits 0.360 / 0.363 / 0.351, mixtures 0.843 / 0.903 / 0.872; variants run
once through the same benchmark, not kept).
"""

from __future__ import annotations

import torch

from .adaptive import half_log_snr
from .calibration import Calibration, linear_state
from .calibration_text import LINEAR_SAMPLER, MAX_CORRECTION
from .objective import RolloutObjective, difference_column, moved_schedule
from .projection import BuiltinRows


class LinearFit(RolloutObjective):
    """theta = (timestep shifts, corrections c_{k,j}) of the built-in ``sampler`` on ``sigmas``
    (its own, N + 1 values ending in 0); the interface lml_core.levenberg uses (size, plan,
    loss, rollout_errors, jacobian) and ``calibration``."""

    def __init__(self, denoise, sampler, model, sigmas, history, move_timesteps, flow, floor,
                 trajectory=0.0):
        self.denoise, self.sampler, self.model = denoise, sampler, model
        self.flow, self.floor, self.trajectory = flow, floor, trajectory
        self.sigmas = list(sigmas)
        self.steps = len(self.sigmas) - 1
        self.t = [half_log_snr(s, flow) for s in self.sigmas[:-1]]
        self.moved = list(range(1, self.steps)) if move_timesteps else []
        self.n_time = len(self.moved)
        # (row k, column) of each correction: x_0's (column 0), then D_k, D_{k-1}, ..
        self.slots = [(k, column) for k in range(self.steps)
                      for column in (0, *range(k + 1, max(k + 1 - history, 0), -1))]
        self.size = self.n_time + len(self.slots)
        # the sampler's rows by timesteps (the corrections leave them alone)
        self.rows_at = BuiltinRows(sampler, model)

    def plan(self, theta):
        """(sigmas, rows) for ``theta``; None where the timesteps are not strictly decreasing
        or fall below the floor, the sampler has no rows there, or a coefficient is beyond
        MAX_CORRECTION."""
        values = theta.tolist()
        sig = moved_schedule(self, values)
        if sig is None:
            return None
        table = self.rows_at(sig)
        if table is None:
            return None
        rows = [list(row) for row in table]
        for q, (k, column) in enumerate(self.slots):
            value = values[self.n_time + q]
            rows[k][column] += value / self.sigmas[0] if column == 0 else value
        if any(abs(v) > MAX_CORRECTION for row in rows for v in row):
            return None
        return sig, rows

    def run(self, plan, x, start=0, outputs=(), denoise=None):
        """(the final sample, the states x_1 .. x_{N-1}, the model's outputs D_0 .. D_{N-1})
        of ``plan`` from ``x``, reusing ``outputs[:start]`` (a fork's: the calls before the
        first one it changes)."""
        sig, rows = plan
        outputs = list(outputs[:start])
        states = [linear_state(rows[k], x, outputs) for k in range(max(start - 1, 0))]
        for k in range(start, self.steps):
            x_k = x if k == 0 else linear_state(rows[k - 1], x, outputs)
            if k > 0:
                states.append(x_k)
            outputs.append((denoise or self.denoise)(x_k, sig[k]))
        return linear_state(rows[-1], x, outputs), states, outputs

    def rollout(self, plan, x, denoise=None):
        """(the final sample, the states x_1..x_{N-1}) of ``plan`` from ``x``."""
        final, states, _ = self.run(plan, x, denoise=denoise)
        return final, states

    @staticmethod
    def first_change(plan, fork) -> int:
        """The first model call ``fork`` makes differently from ``plan``: at a moved sigma,
        or on a state whose row changed."""
        (sig, rows), (fork_sig, fork_rows) = plan, fork
        moved = next((k for k in range(1, len(sig) - 1) if sig[k] != fork_sig[k]), len(sig) - 1)
        row = next((k for k in range(len(rows)) if rows[k] != fork_rows[k]), len(rows))
        return min(moved, row + 1)

    def jacobian(self, theta, x, reference, eps, kept=None):
        """(residual at ``theta``, Jacobian [rows, P]) by forward differences (-eps where +eps
        is infeasible; a zero column where both are); each column's rollout reuses the model
        calls before the first one its parameter changes; ``kept``: the model calls of the
        rollout at ``theta`` on these rows (a Replay), the forks call the model."""
        plan = self.plan(theta)
        final, states, outputs = self.run(plan, x, denoise=kept)
        residual = self.residual((final, states), plan[0], reference)

        def forked(fork):  # the rollout from the first model call the fork changes
            fork_final, fork_states, _ = self.run(fork, x, self.first_change(plan, fork),
                                                  outputs)
            return self.residual((fork_final, fork_states), fork[0], reference)

        columns = [difference_column(self, theta, p, eps, residual, forked)
                   for p in range(self.size)]
        return residual, torch.stack(columns, 1)

    def calibration(self, theta, fitted_on, report) -> Calibration:
        sig, rows = self.plan(theta)
        return Calibration(base="", sigmas=sig, corrections=rows, fitted_on=fitted_on,
                           report=report, sampler=LINEAR_SAMPLER)
