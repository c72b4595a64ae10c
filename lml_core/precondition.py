"""The damped low-rank Levenberg-Marquardt preconditioner.

For a direction ``g`` and history vectors ``h_1..h_r`` (all shaped ``[B, ...]``), LML uses

    V = [v_1 .. v_r],   v_j = kappa * h_j + (1 - kappa) * g
    P g = lam * (lam * I + V V^T)^(-1) g,

optionally renormalised to ``|g|`` per sample.  ``V V^T`` is a rank-r stand-in for the Hessian
of -log p and ``lam * I`` the Levenberg-Marquardt damping.

How we compute it, exactly and without cancellation
----------------------------------------------------
Every vector involved lies in ``span{g, h_1..h_r}``.  Write ``B = [g, h_1..h_r]`` (m = r + 1
columns) and ``V = B A`` with the fixed m x r coefficient matrix ``A`` (``A[0, j] = 1 - kappa``,
``A[j + 1, j] = kappa``).  Looking for ``P g = B y``, the equation
``(lam I + V V^T) B y = lam B e_0`` holds whenever the small m x m system

    (lam * I + A A^T G) y = lam * e_0,      G = B^T B  (the Gram matrix),

holds.  That system is always solvable (the eigenvalues of ``A A^T G`` are real and >= 0) even
when the history is rank deficient, and it is solved in float64.  No D-dimensional vector is
ever subtracted from a nearly equal one: with ``kappa = 0`` the solution is exactly
``y = lam / (lam + |g|^2) e_0``, so renormalisation returns ``g`` itself.  The reference
implementation (``cur - v <cur, v> / (lamb + |v|^2)``) instead loses every digit when
``lamb << |v|^2`` and returns NaN in float16.

Damping modes
-------------
``relative`` (default): ``lam = damping * mean_j |v_j|^2``, so one setting works across models,
resolutions and dtypes (the operator then depends only on directions, not scale).
``absolute``: ``lam = damping`` (the reference's ``lamb``).
``adaptive``: ``lam`` is solved per sample so that the renormalised output is ``g`` turned away
from the history by ``omega`` times the angle between ``g`` and the span of the history (see
``adaptive.py``).

Guards: a sample whose inputs are not finite, whose ``g`` is zero, or whose history is all zero
gets ``g`` back unchanged; finite input never gives NaN output.
"""

from __future__ import annotations

import torch

from .adaptive import adaptive_lambda
from .gram import lm_coefficients, solve_lm_system
from .options import DAMPING_MODES, DEFAULTS


def lm_precondition(
    g: torch.Tensor,
    history,
    damping: float = DEFAULTS["damping"],
    kappa: float = DEFAULTS["kappa"],
    damping_mode: str = DEFAULTS["damping_mode"],
    renormalize: bool = True,
    omega: float = DEFAULTS["omega"],
    return_info: bool = False,
):
    """Return ``lam * (lam I + V V^T)^(-1) g`` (renormalised to ``|g|`` if ``renormalize``).

    Args:
        g: the current direction, ``[B, ...]`` of any rank and floating dtype.
        history: up to r tensors shaped like ``g``, most recent first; ``v_j = kappa * h_j +
            (1 - kappa) * g``.  An empty history returns ``g``.
        damping: ``lam`` relative to ``mean |v_j|^2`` (``relative``), or ``lam`` itself
            (``absolute``); a float or a per-sample tensor ``[B]``.  Unused by ``adaptive``.
        kappa: weight of the history in each column of V, in [0, 1].
        damping_mode: ``relative``, ``absolute`` or ``adaptive``.
        renormalize: rescale the result to ``|g|`` per sample (the reference's behaviour).
        omega: for ``adaptive``: the fraction of the angle between ``g`` and the history span by
            which the output is turned away from the history.
        return_info: also return a dict with per-sample ``lam`` and ``cos`` (cosine between the
            output and ``g``; 1 means no correction).

    Returns the preconditioned direction in ``g.dtype`` (and the info dict if asked).
    """
    if damping_mode not in DAMPING_MODES:
        raise ValueError(f"damping_mode must be one of {DAMPING_MODES}, got {damping_mode!r}")
    history = list(history)
    batch = g.shape[0]
    ones = torch.ones(batch, dtype=torch.float64, device=g.device)
    if not history:
        return (g, {"lam": ones * float("inf"), "cos": ones}) if return_info else g

    rank = len(history)
    # One float64 copy of [g, h_1..h_r] ([N, m, D]); everything else is m x m per sample.
    basis = torch.empty(batch, rank + 1, g[0].numel(), dtype=torch.float64, device=g.device)
    for j, vec in enumerate([g] + history):
        basis[:, j].copy_(vec.reshape(batch, -1))
    gram = basis @ basis.transpose(1, 2)
    a = lm_coefficients(rank, float(kappa)).to(g.device)
    v_gram = a.T @ gram @ a  # V^T V, [N, r, r]
    mean_v_sq = torch.diagonal(v_gram, dim1=1, dim2=2).mean(dim=1)
    g_sq = gram[:, 0, 0]

    if damping_mode == "adaptive":
        lam = adaptive_lambda(gram, a, float(kappa), float(omega))
    else:
        damping = torch.as_tensor(damping, dtype=torch.float64, device=g.device).expand(batch)
        lam = damping * mean_v_sq if damping_mode == "relative" else damping.clone()

    # Samples the operator leaves alone: non-finite input, zero g, no history, no damping
    # (lam = 0 would mean a singular system), or infinite damping (the identity).
    usable = torch.isfinite(gram).all(dim=2).all(dim=1) & (g_sq > 0) & (mean_v_sq > 0)
    usable = usable & (lam > 0) & torch.isfinite(lam)
    safe_lam = torch.where(usable, lam, ones)
    safe_gram = torch.where(usable[:, None, None], gram, torch.eye(rank + 1, dtype=gram.dtype,
                                                                    device=gram.device))
    y = solve_lm_system(safe_gram, a, safe_lam)

    # Norm of B y and its product with g, from the Gram matrix: |B y|^2 = y^T G y and
    # <B y, g> = (G y)_0.  Renormalising (and falling back to g) is then a change of y, and
    # the one pass over D-sized data is the final combination.
    gy = (gram @ y[:, :, None])[:, :, 0]
    raw_sq = (y * gy).sum(dim=1)
    good = usable & torch.isfinite(y).all(dim=1) & torch.isfinite(raw_sq) & (raw_sq > 0)
    raw_norm = raw_sq.clamp(min=0).sqrt()
    g_norm = g_sq.sqrt()
    scale = g_norm / raw_norm if renormalize else ones
    e0 = torch.zeros_like(y)
    e0[:, 0] = 1.0
    y = torch.where(good[:, None], y * torch.where(good, scale, ones)[:, None], e0)
    out = torch.bmm(y[:, None, :], basis)[:, 0]  # B y, float64 [N, D], no [N, m, D] temporary
    result = out.reshape(g.shape).to(g.dtype)
    if not return_info:
        return result
    out_norm = g_norm if renormalize else raw_norm
    cos = torch.where(good, scale * gy[:, 0] / (out_norm * g_norm), ones)
    return result, {"lam": torch.where(good, lam, ones * float("inf")), "cos": cos.clamp(-1, 1)}
