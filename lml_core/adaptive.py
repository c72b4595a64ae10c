"""Adaptive LM damping: choose lam per sample from the step geometry.

For rank 1 the renormalised LM operator only *rotates* ``g`` inside the plane of ``g`` and the
previous direction ``h``, away from ``h``.  So instead of a fixed ``lam`` we ask for a rotation:
turn ``g`` away from the history by ``omega`` times the angle ``theta`` between ``g`` and the
history (``theta`` = angle between ``g`` and its projection onto ``span{h_1..h_r}``; for rank 1
simply the angle between ``g`` and ``h``).  Rotating the direction away from the previous one
by a fraction of their angle is a norm-preserving Adams-Bashforth-like extrapolation of the
direction; ``omega = h_n / (2 h_{n-1})`` (step sizes in log-SNR) is the AB2 weight.

Rank 1, closed form.  With ``u = g / |g|``, ``h = p_par u + p_perp e`` (``e`` a unit vector
orthogonal to ``u``), ``v = kappa h + (1 - kappa) g`` and the unrenormalised output
``g - t v`` (``t = <v, g> / (lam + |v|^2)``), the output makes the angle ``phi`` with ``g``
where

    tan(phi) = t kappa p_perp / ((1 - t (1 - kappa)) |g| - t kappa p_par).

Solving for ``t`` at ``phi = omega * theta``:

    t = tan(phi) |g| / (kappa p_perp + tan(phi) ((1 - kappa) |g| + kappa p_par)),
    lam = <v, g> / t - |v|^2.

Rank r > 1: the same target, ``lam`` found by bisection on ``log lam`` in the (r+1)-dimensional
Gram space (the rotation angle decreases monotonically as ``lam`` grows), 48 halvings.

Guards (``lam = inf``, i.e. the plain solver's direction): no history, ``omega = 0``, an angle
below 1e-4 rad, a reversal (``<g, h_1> <= 0``: the angle between the current and the most recent
direction is 90 degrees or more).  When the target rotation cannot be reached (it can be at
most the full projection out of the history span), ``lam`` is clamped to ``1e-6 mean |v|^2``.
"""

from __future__ import annotations

import math

import torch

from .gram import history_angle, output_cosine

# Below 1e-4 rad the angle is the Gram space's rounding, not geometry: with g in the span of
# the history (theta = 0) history_angle's Tikhonov term and arccos near 1 give 1e-6-1e-5 rad,
# different at another scale of the same vectors.  A rotation of omega * 1e-4 rad is nothing
# a sampler can see.
_MIN_ANGLE = 1e-4
_MIN_RELATIVE_LAM = 1e-6
_BISECTION_STEPS = 48


def adaptive_lambda(gram: torch.Tensor, a: torch.Tensor, kappa: float,
                    omega: float) -> torch.Tensor:
    """Per-sample lam giving the rotation ``omega * theta``; inf where no correction applies."""
    inf = torch.full_like(gram[:, 0, 0], float("inf"))
    if omega <= 0:
        return inf
    rank = a.shape[1]
    g_sq, h_g = gram[:, 0, 0], gram[:, 1, 0]
    v_gram = a.T @ gram @ a
    mean_v_sq = torch.diagonal(v_gram, dim1=1, dim2=2).mean(dim=1)
    lam_floor = _MIN_RELATIVE_LAM * mean_v_sq

    theta = history_angle(gram)
    phi = (omega * theta).clamp(max=math.pi / 2 - 1e-9)
    applies = (theta > _MIN_ANGLE) & (h_g > 0) & torch.isfinite(theta)

    if rank == 1:
        g_norm = g_sq.sqrt()
        p_par = h_g / g_norm
        p_perp = (gram[:, 1, 1] - p_par**2).clamp(min=0).sqrt()
        tan_phi = torch.tan(phi)
        t = tan_phi * g_norm / (kappa * p_perp + tan_phi * ((1 - kappa) * g_norm + kappa * p_par))
        v_g = kappa * h_g + (1 - kappa) * g_sq
        lam = v_g / t - v_gram[:, 0, 0]
    else:
        # Bisection on log(lam) between 1e-6 and 1e12 times mean |v|^2.
        target_cos = torch.cos(phi)
        lo = torch.log(lam_floor.clamp(min=1e-300))
        hi = torch.log((1e12 * mean_v_sq).clamp(min=1e-300))
        safe_gram = torch.where(applies[:, None, None], gram,
                                torch.eye(rank + 1, dtype=gram.dtype, device=gram.device))
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            # larger lam -> smaller rotation -> larger cos
            too_much_rotation = output_cosine(safe_gram, a, mid.exp()) < target_cos
            lo = torch.where(too_much_rotation, mid, lo)
            hi = torch.where(too_much_rotation, hi, mid)
        lam = (0.5 * (lo + hi)).exp()

    lam = torch.where(torch.isfinite(lam), lam.clamp(min=0), inf)
    lam = torch.maximum(lam, lam_floor)
    return torch.where(applies, lam, inf)


def auto_omega(h: float, h_prev: float) -> float:
    """AB2's extrapolation weight h_n / (2 h_{n-1}) from the current and previous step sizes."""
    if not (h_prev > 0 and h > 0 and math.isfinite(h) and math.isfinite(h_prev)):
        return 0.0
    return h / (2.0 * h_prev)


def half_log_snr(sigma: float, flow: bool) -> float:
    """lambda = log(alpha / sigma): -log(sigma) for VE, log((1 - sigma) / sigma) for flow."""
    if sigma <= 0:
        return math.inf
    if flow:
        return math.log(max(1.0 - sigma, 1e-12) / sigma)
    return -math.log(sigma)


def step_omega(omega, sigmas: list[float], step: int, flow: bool) -> float:
    """omega at ``step``: the fixed setting, or for "auto" AB2's weight from the log-SNR step
    sizes (0 at the first step, and at a final step to sigma 0, where the step is infinite)."""
    if omega != "auto":
        return omega
    if step == 0:
        return 0.0
    lam_prev, lam, lam_next = (half_log_snr(s, flow) for s in sigmas[step - 1: step + 2])
    return auto_omega(lam_next - lam, lam - lam_prev)
