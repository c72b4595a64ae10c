"""An exact-score test model: a Gaussian mixture whose posterior mean is closed form.

x0 ~ sum_k w_k N(mu_k, s_k^2 I).  VE noising x = x0 + sigma n; flow noising
x = (1 - sigma) x0 + sigma n.  In both cases x | k is Gaussian, so

    D(x, sigma) = E[x0 | x] = sum_k r_k(x) (mu_k + c_k (x - a mu_k)),

with a = 1 (VE) or 1 - sigma (flow), component variance var_k = a^2 s_k^2 + sigma^2,
c_k = a s_k^2 / var_k and responsibilities r_k ~ w_k N(x; a mu_k, var_k I).
"""

import math

import torch


class MixtureDenoiser:
    def __init__(self, dim=8, components=3, flow=False, seed=0, spread=1.5):
        gen = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(components, dim, generator=gen, dtype=torch.float64) * spread
        self.s = 0.3 + 0.4 * torch.rand(components, generator=gen, dtype=torch.float64)
        self.w = torch.softmax(torch.randn(components, generator=gen, dtype=torch.float64), 0)
        self.flow = flow
        self.calls = 0

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        shape, dtype = x.shape, x.dtype
        xf = x.reshape(shape[0], -1).to(torch.float64)
        sigma = sigma.reshape(-1, 1).to(torch.float64)  # [B, 1]
        a = (1 - sigma) if self.flow else torch.ones_like(sigma)
        var = a**2 * self.s**2 + sigma**2  # [B, K]
        diff = xf[:, None, :] - a[:, :, None] * self.mu[None]  # [B, K, D]
        dim = xf.shape[1]
        logp = (torch.log(self.w) - 0.5 * dim * torch.log(2 * math.pi * var)
                - 0.5 * (diff**2).sum(-1) / var)
        r = torch.softmax(logp, dim=1)
        c = a * self.s**2 / var
        mean = self.mu[None] + c[:, :, None] * diff
        return (r[:, :, None] * mean).sum(1).reshape(shape).to(dtype)


def karras_sigmas(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def flow_sigmas(n, shift=3.0):
    t = torch.linspace(1, 0, n + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def reference_solution(model, x, sigma_start, sigma_end, steps=400):
    """RK4 in log(sigma) from sigma_start to sigma_end > 0, then the exact final jump
    x = D(x, sigma_end) that every solver's last step to sigma = 0 makes."""
    x = x.to(torch.float64)
    s_in = x.new_ones([x.shape[0]])
    ts = torch.linspace(math.log(sigma_start), math.log(sigma_end), steps + 1, dtype=torch.float64)

    def f(t, x):  # dx/dt with sigma = e^t: sigma * (x - D) / sigma = x - D
        return x - model(x, torch.exp(t) * s_in)

    for t, t_next in zip(ts[:-1], ts[1:]):
        h = t_next - t
        k1 = f(t, x)
        k2 = f(t + h / 2, x + h / 2 * k1)
        k3 = f(t + h / 2, x + h / 2 * k2)
        k4 = f(t_next, x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return model(x, torch.exp(ts[-1]) * s_in)
