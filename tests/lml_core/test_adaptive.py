"""Adaptive damping: the solved lam reproduces the fixed operator, and the applied rotation is
omega times the angle between the current direction and the history."""

import math

import pytest
import torch

from lml_core import auto_omega, half_log_snr, lm_precondition, sample_lml_euler


def angle(a, b):
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return torch.arccos(cos.clamp(-1, 1))


def pair(seed, shape=(6, 3, 5, 5), spread=0.6):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = 1.3 * h + spread * torch.randn(shape, generator=gen, dtype=torch.float64)
    return g, h


@pytest.mark.parametrize("omega", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("kappa", [1.0, 0.8, 0.5])
def test_rank1_equals_fixed_operator_with_solved_damping(omega, kappa):
    g, h = pair(int(omega * 100 + kappa * 10))
    out, info = lm_precondition(g, [h], kappa=kappa, damping_mode="adaptive", omega=omega,
                                return_info=True)
    fixed = lm_precondition(g, [h], damping=info["lam"], kappa=kappa, damping_mode="absolute")
    assert torch.isfinite(info["lam"]).all() and (info["lam"] > 0).all()
    assert ((out - fixed).flatten(1).norm(dim=1) / g.flatten(1).norm(dim=1)).max() < 1e-6


@pytest.mark.parametrize("omega", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("kappa", [1.0, 0.7])
def test_rank1_rotation_is_omega_times_angle(omega, kappa):
    g, h = pair(7)
    out = lm_precondition(g, [h], kappa=kappa, damping_mode="adaptive", omega=omega)
    theta = angle(g, h)
    assert torch.allclose(angle(out, g), omega * theta, atol=1e-6)
    # turned away from h: the angle to h grows by the same amount
    assert torch.allclose(angle(out, h), (1 + omega) * theta, atol=1e-6)
    assert torch.allclose(out.flatten(1).norm(dim=1), g.flatten(1).norm(dim=1), rtol=1e-9)


@pytest.mark.parametrize("rank", [2, 3])
def test_rank_r_rotation_is_omega_times_angle_to_history_span(rank):
    gen = torch.Generator().manual_seed(rank)
    history = [torch.randn(4, 40, generator=gen, dtype=torch.float64) for _ in range(rank)]
    g = sum(history) + 0.5 * torch.randn(4, 40, generator=gen, dtype=torch.float64)
    g = g + 2.0 * history[0]  # keep <g, h_1> > 0
    out, info = lm_precondition(g, history, kappa=1.0, damping_mode="adaptive", omega=0.5,
                                return_info=True)
    basis = torch.stack(history, 2)  # [B, D, r]
    coef = torch.linalg.lstsq(basis, g[:, :, None]).solution
    theta = angle(g, (basis @ coef)[:, :, 0])
    assert torch.allclose(angle(out, g), 0.5 * theta, atol=1e-6)
    fixed = lm_precondition(g, history, damping=info["lam"], kappa=1.0, damping_mode="absolute")
    assert torch.allclose(out, fixed, atol=1e-9)


def test_guards_return_g():
    g, h = pair(3, shape=(3, 10))
    h[0] = -h[0]             # reversal: angle > 90 degrees
    h[1] = 2.0 * g[1]        # no angle at all
    out, info = lm_precondition(g, [h], kappa=1.0, damping_mode="adaptive", omega=0.75,
                                return_info=True)
    assert torch.equal(out[:2], g[:2])
    assert torch.isinf(info["lam"][:2]).all() and torch.isfinite(info["lam"][2])
    assert torch.equal(lm_precondition(g, [h], kappa=1.0, damping_mode="adaptive", omega=0.0), g)


def test_unreachable_rotation_is_clamped_finite():
    # angle 80 degrees: turning by 1.0 * 80 would pass the 90-degree projection limit
    g = torch.tensor([[math.cos(math.radians(80)), math.sin(math.radians(80))]],
                     dtype=torch.float64)
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    out = lm_precondition(g, [h], kappa=1.0, damping_mode="adaptive", omega=1.0)
    assert torch.isfinite(out).all()
    assert float(angle(out, g)[0]) <= math.radians(10) + 1e-6


def test_omega_zero_sampler_is_plain_euler():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, generator=gen) * 10
    model = lambda x, sigma, **kw: 0.5 * x / (1 + sigma[:, None] ** 2) ** 0.5  # noqa: E731
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.3, 0.0])
    plain = sample_lml_euler(model, x, sigmas, rank=0, disable=True)
    adaptive0 = sample_lml_euler(model, x, sigmas, damping_mode="adaptive", omega=0.0, disable=True)
    assert torch.equal(plain, adaptive0)


def test_auto_omega_is_the_ab2_weight_with_guards():
    assert auto_omega(0.2, 0.4) == pytest.approx(0.25)
    assert auto_omega(0.3, 0.3) == pytest.approx(0.5)
    assert auto_omega(math.inf, 0.3) == 0.0  # final step to sigma = 0
    assert auto_omega(0.3, 0.0) == 0.0       # no previous step
    # log-SNR step sizes: VE lambda = -log sigma, flow lambda = log((1 - sigma) / sigma)
    assert half_log_snr(0.5, flow=False) == pytest.approx(math.log(2))
    assert half_log_snr(0.25, flow=True) == pytest.approx(math.log(3))
    assert half_log_snr(0.0, flow=True) == math.inf
