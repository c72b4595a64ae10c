"""The core tests' exact-score model and plain reference samplers.  The model is the
benchmark's closed-form mixture (bench.exact), here with isotropic components
x0 ~ N(mu_k, s_k^2 I), well separated when ``spread`` is large, so that the convergence tests
are not dominated by samples that switch modes."""

import math

import torch

from bench import common
from bench.exact import GaussianMixture, MixtureModel


def MixtureDenoiser(dim=8, components=3, flow=False, seed=0, spread=1.5):
    """A k-diffusion denoiser ``model(x, sigma)`` (VE or flow noising) that counts its calls."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(components, dim, generator=gen, dtype=torch.float64) * spread
    s = 0.3 + 0.4 * torch.rand(components, generator=gen, dtype=torch.float64)
    w = torch.softmax(torch.randn(components, generator=gen, dtype=torch.float64), 0)
    bases = torch.eye(dim, dtype=torch.float64).expand(components, dim, dim).contiguous()
    variances = (s**2)[:, None].expand(components, dim).contiguous()
    return MixtureModel(GaussianMixture("test", w, mu, bases, variances, 0.0), flow)


def karras_sigmas(n):
    return common.karras_sigmas(n).float()


def flow_sigmas(n):
    return common.flow_sigmas(n).float()


def reference_solution(model, x, sigma_start, sigma_end, steps=400):
    """RK4 in log(sigma) from sigma_start to sigma_end > 0, then the exact final jump
    x = D(x, sigma_end) that every solver's last step to sigma = 0 makes."""
    x = x.to(torch.float64)
    s_in = x.new_ones([x.shape[0]])
    grid = torch.linspace(math.log(sigma_start), math.log(sigma_end), steps + 1,
                          dtype=torch.float64).tolist()
    x = common.rk4(lambda x, u: x - model(x, math.exp(u) * s_in), x, grid)
    return model(x, sigma_end * s_in)


@torch.no_grad()
def plain_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """ComfyUI's sample_euler (no churn), written out (k-diffusion signature)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def plain_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """ComfyUI's sample_dpmpp_2m, written out: a sampler with its own history."""
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x
