"""Data whose posterior mean is closed form: mixtures of (possibly low-rank) Gaussians.

Component k has mean ``mu_k``, an orthonormal basis ``U_k`` (D x r) with variances ``d_k`` along
it, and an isotropic floor ``e2`` (``Sigma_k = U_k diag(d_k) U_k^T + e2 I``; ``e2 = 0`` and
r = D give a full-rank anisotropic Gaussian).  Noised data is ``x = a x0 + s n`` with ``a = 1``
(VE: s is sigma) or ``a = 1 - s`` (flow matching: s in [0, 1]).  Then ``x | k`` is Gaussian
with covariance ``C_k = a^2 Sigma_k + s^2 I``, which in the basis of U_k has variances
``q = a^2 (d + e2) + s^2`` along U_k and ``c = a^2 e2 + s^2`` orthogonal to it, and

    p(k | x)        ~ w_k N(x; a mu_k, C_k)
    E[x0 | x, k]    = mu_k + a Sigma_k C_k^-1 (x - a mu_k)
                    = mu_k + a [U_k diag((d + e2) / q) z + (e2 / c) (y - U_k z)],
                      y = x - a mu_k, z = U_k^T y
    D(x, s)         = sum_k p(k | x) E[x0 | x, k].

Everything is computed in float64 from a handful of (N x K x r) projections, so one call costs
two matrix products with the stacked bases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class GaussianMixture:
    name: str
    weights: torch.Tensor  # [K]
    means: torch.Tensor  # [K, D]
    bases: torch.Tensor  # [K, D, r] orthonormal columns
    variances: torch.Tensor  # [K, r]
    iso: float  # e2

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator):
        """n exact samples and their component labels (float64)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        r = self.bases.shape[2]
        coef = torch.randn(n, r, generator=generator, dtype=torch.float64)
        coef = coef * self.variances[k].sqrt()
        x = self.means[k] + torch.einsum("ndr,nr->nd", self.bases[k], coef)
        if self.iso > 0:
            x = x + math.sqrt(self.iso) * torch.randn(n, self.dim, generator=generator,
                                                      dtype=torch.float64)
        return x, k

    def _projector(self):
        """[D, K*r + K]: the bases side by side, then the means (cached)."""
        if getattr(self, "_proj", None) is None:
            flat = self.bases.permute(1, 0, 2).reshape(self.dim, -1)
            self._proj = torch.cat([flat, self.means.T], dim=1).contiguous()
        return self._proj

    def _parts(self, x, s, flow):
        # Large D: one matrix product gives every projection; no other D-sized temporaries
        # (allocating them costs more than the arithmetic).
        a = 1.0 - s if flow else 1.0
        x = x.to(torch.float64)
        k, dim, r = self.bases.shape
        e2 = self.iso
        c = a * a * e2 + s * s
        q = a * a * (self.variances + e2) + s * s  # [K, r]
        proj = x @ self._projector()
        xu, xmu = proj[:, : k * r].reshape(-1, k, r), proj[:, k * r:]
        muu = torch.einsum("kd,kdr->kr", self.means, self.bases)
        z = xu - a * muu[None]
        full_rank = r == dim
        log_lik = -0.5 * (z * z / q[None]).sum(-1) - 0.5 * q.log().sum(-1)[None]
        if not full_rank:
            x_sq = torch.linalg.vector_norm(x, dim=1)[:, None] ** 2
            y_sq = x_sq - 2 * a * xmu + a * a * (self.means * self.means).sum(1)[None]
            resid = (y_sq - (z * z).sum(-1)).clamp(min=0)
            log_c = torch.log(torch.as_tensor(c, dtype=torch.float64))  # s may be a tensor
            log_lik = log_lik - 0.5 * resid / c - 0.5 * (dim - r) * log_c
        post = torch.softmax(log_lik + self.weights.log()[None], dim=1)  # [N, K]
        return a, c, q, z, post, full_rank, x

    def responsibilities(self, x, s, flow=False):
        return self._parts(x, s, flow)[4]

    def denoise(self, x, s, flow=False):
        """E[x0 | x] at noise level s (a Python float, or a 0-d float64 tensor to differentiate
        in: bench.gradient_fit), returned in x's dtype."""
        a, c, q, z, post, full_rank, x64 = self._parts(x, s, flow)
        k, dim, r = self.bases.shape
        e2 = self.iso
        iso_gain = 0.0 if full_rank else a * e2 / c
        along = a * (self.variances + e2)[None] / q[None] - iso_gain  # [1, K, r]
        coef = torch.cat([(post[:, :, None] * along * z).reshape(x.shape[0], -1),
                          post * (1.0 - a * iso_gain)], dim=1)
        if iso_gain:
            out = torch.addmm(x64, coef, self._projector().T, beta=iso_gain)
        else:
            out = coef @ self._projector().T
        return out.to(x.dtype)


class MixtureModel:
    """k-diffusion-style denoiser ``model(x, sigma, **extra_args)`` for a mixture; counts calls."""

    def __init__(self, mixture: GaussianMixture, flow: bool):
        self.mixture, self.flow, self.calls = mixture, flow, 0

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        s = float(sigma.reshape(-1)[0])
        return self.mixture.denoise(x.reshape(x.shape[0], -1), s, self.flow).reshape(x.shape)


def _random_rotation(dim, gen):
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None]


def mixture_2d(seed=0) -> GaussianMixture:
    """8 elongated Gaussians on a ring of radius 2 with unequal weights."""
    gen = torch.Generator().manual_seed(seed)
    k = 8
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    bases = torch.stack([_random_rotation(2, gen) for _ in range(k)])
    variances = torch.tensor([[0.25**2, 0.04**2]], dtype=torch.float64).repeat(k, 1)
    variances = variances * (0.5 + torch.rand(k, 1, generator=gen, dtype=torch.float64))
    weights = torch.tensor([3, 1, 2, 1, 3, 1, 2, 1], dtype=torch.float64)
    return GaussianMixture("mix2d", weights / weights.sum(), means, bases, variances, 0.0)


def mixture_64d(seed=1) -> GaussianMixture:
    """6 anisotropic Gaussians in 64-D, eigenvalues log-uniform in [0.005, 0.5]."""
    gen = torch.Generator().manual_seed(seed)
    k, dim = 6, 64
    means = 0.6 * torch.randn(k, dim, generator=gen, dtype=torch.float64)
    bases = torch.stack([_random_rotation(dim, gen) for _ in range(k)])
    variances = torch.exp(torch.empty(k, dim, dtype=torch.float64).uniform_(
        math.log(0.005), math.log(0.5), generator=gen))
    weights = torch.rand(k, generator=gen, dtype=torch.float64) + 0.3
    return GaussianMixture("mix64d", weights / weights.sum(), means, bases, variances, 0.0)


def _smooth_images(n, gen, size=32, channels=3, cutoff=4):
    """n random low-frequency images [n, channels*size*size] (an 'image-like' pattern)."""
    freq = torch.randn(n, channels, cutoff, cutoff, generator=gen, dtype=torch.float64)
    grid = torch.arange(size, dtype=torch.float64) / size
    waves = torch.stack([torch.cos(math.pi * f * (grid + 0.5 / size)) for f in range(cutoff)])
    img = torch.einsum("ncij,ix,jy->ncxy", freq, waves, waves)
    return img.reshape(n, -1)


def subspace_3072d(seed=2) -> GaussianMixture:
    """8 components on 6-dimensional subspaces of 3x32x32 'images' (smooth means and bases),
    per-pixel mean scale ~0.5, in-subspace std 0.1-0.4 per pixel, off-subspace std 0.02."""
    gen = torch.Generator().manual_seed(seed)
    k, r = 8, 6
    means = _smooth_images(k, gen)
    means = 0.5 * means / means.std(dim=1, keepdim=True)
    bases = []
    for _ in range(k):
        q, _ = torch.linalg.qr(_smooth_images(r, gen, cutoff=6).T)
        bases.append(q)
    bases = torch.stack(bases)
    dim = means.shape[1]
    pixel_std = torch.empty(k, r, dtype=torch.float64).uniform_(0.1, 0.4, generator=gen)
    variances = (pixel_std * math.sqrt(dim) / math.sqrt(r)) ** 2
    weights = torch.rand(k, generator=gen, dtype=torch.float64) + 0.3
    return GaussianMixture("sub3072d", weights / weights.sum(), means, bases, variances, 0.02**2)


EXACT_DATASETS = {"mix2d": mixture_2d, "mix64d": mixture_64d, "sub3072d": subspace_3072d}
