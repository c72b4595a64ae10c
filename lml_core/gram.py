"""Gram-space algebra of the LM operator: everything that needs only the (r+1) x (r+1) Gram
matrix ``G = B^T B`` of the basis ``B = [g, h_1..h_r]``, never the long vectors.

The LM columns are ``V = B A`` with the fixed coefficient matrix ``A`` (``lm_coefficients``),
and the undamped-renormalised output ``P g = B y`` solves the small system

    (lam I + A A^T G) y = lam e_0                              (``solve_lm_system``)

which is always solvable for lam > 0 (the eigenvalues of ``A A^T G`` are real and >= 0).
All functions are batched over samples: ``gram`` is ``[N, m, m]`` in float64.
"""

from __future__ import annotations

import torch


def lm_coefficients(rank: int, kappa: float) -> torch.Tensor:
    """The m x r matrix A with V = B A: ``A[0, j] = 1 - kappa``, ``A[j + 1, j] = kappa``."""
    a = torch.zeros(rank + 1, rank, dtype=torch.float64)
    a[0, :] = 1.0 - kappa
    a[torch.arange(1, rank + 1), torch.arange(rank)] = kappa
    return a


def solve_lm_system(gram: torch.Tensor, a: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """y solving (lam I + A A^T G) y = lam e_0 per sample; float64 ``[N, m]``.  lam must be > 0
    (callers mask the samples where it is not)."""
    n, m, _ = gram.shape
    eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
    system = lam[:, None, None] * eye + (a @ a.T) @ gram
    rhs = torch.zeros(n, m, 1, dtype=gram.dtype, device=gram.device)
    rhs[:, 0, 0] = lam
    # solve_ex: no host synchronisation for a singularity check that cannot fire for lam > 0.
    y, _ = torch.linalg.solve_ex(system, rhs)
    return y[..., 0]


def output_cosine(gram: torch.Tensor, a: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """cos of the angle between the LM output at damping lam and g."""
    y = solve_lm_system(gram, a, lam)[:, :, None]
    out_g = (y.transpose(1, 2) @ gram[:, :, 0:1])[:, 0, 0]
    out_sq = (y.transpose(1, 2) @ gram @ y)[:, 0, 0]
    return out_g / (out_sq.clamp(min=0).sqrt() * gram[:, 0, 0].sqrt())


def history_angle(gram: torch.Tensor) -> torch.Tensor:
    """Angle between g (column 0 of the basis) and its projection on span{h_1..h_r}."""
    g_sq = gram[:, 0, 0]
    g_h = gram[:, 1:, 0:1]
    h_h = gram[:, 1:, 1:]
    # The history columns scaled to unit norm (Jacobi), so a tiny Tikhonov term keeps a
    # rank-deficient history solvable without biasing a short vector's share of the projection
    # by the longest one's trace (that bias read as a 1e-4 rad angle for g inside the span);
    # solve_ex avoids the host synchronisation that pinv/eigh error checks would cost on a GPU.
    diag = torch.diagonal(h_h, dim1=1, dim2=2)
    scale = torch.where(diag > 0, diag.clamp(min=1e-300).rsqrt(), torch.ones_like(diag))
    h_h = h_h * scale[:, :, None] * scale[:, None, :]
    g_h = g_h * scale[:, :, None]
    eye = torch.eye(h_h.shape[1], dtype=h_h.dtype, device=h_h.device)
    coef, _ = torch.linalg.solve_ex(h_h + 1e-13 * eye, g_h)
    proj_sq = (g_h.transpose(1, 2) @ coef)[:, 0, 0]
    cos = (proj_sq.clamp(min=0) / g_sq).sqrt().clamp(max=1.0)
    return torch.arccos(cos)
