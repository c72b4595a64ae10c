"""The LM preconditioner against a dense float64 solve, the reference formula, and its guards."""

import pytest
import torch

from lml_core import lm_precondition

SHAPES = [(2, 3, 5), (3, 4, 8, 8), (2, 1, 17), (1, 2, 3, 4, 5), (4, 16)]


def dense_solution(g, history, lam, kappa, relative):
    """lam * (lam I + V V^T)^-1 g per sample, by a dense float64 solve."""
    out = []
    for b in range(g.shape[0]):
        gb = g[b].reshape(-1).double()
        v = torch.stack([kappa * h[b].reshape(-1).double() + (1 - kappa) * gb for h in history], 1)
        lam_b = lam * (v * v).sum(0).mean() if relative else torch.tensor(lam, dtype=torch.float64)
        system = lam_b * torch.eye(v.shape[0], dtype=torch.float64) + v @ v.T
        out.append(lam_b * torch.linalg.solve(system, gb))
    return torch.stack(out).reshape(g.shape)


def reference_lm_correct(prev, cur, lamb, kappa):
    """The public reference formula, evaluated as written (float64 here)."""
    v = kappa * prev + (1 - kappa) * cur
    dims = tuple(range(1, cur.ndim))
    inner = (cur * v).sum(dims, keepdim=True)
    out = cur - v * inner / (lamb + (v * v).sum(dims, keepdim=True))
    norm = lambda t: (t * t).sum(dims, keepdim=True).sqrt()  # noqa: E731
    return out * norm(cur) / norm(out)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_dense_solve(rank, relative, shape):
    gen = torch.Generator().manual_seed(rank * 100 + len(shape))
    g = torch.randn(shape, generator=gen)
    history = [torch.randn(shape, generator=gen) for _ in range(rank)]
    kappa = float(torch.rand((), generator=gen))
    damping = 0.05 + float(torch.rand((), generator=gen)) * (1.0 if relative else 20.0)
    out = lm_precondition(g, history, damping=damping, kappa=kappa,
                          damping_mode="relative" if relative else "absolute", renormalize=False)
    expected = dense_solution(g, history, damping, kappa, relative)
    assert out.shape == g.shape and out.dtype == g.dtype
    for b in range(shape[0]):
        assert rel_err(out[b], expected[b]) < 1e-6


def test_float64_input_is_exact_to_float64():
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(2, 50, dtype=torch.float64, generator=gen)
    history = [torch.randn(2, 50, dtype=torch.float64, generator=gen) for _ in range(3)]
    out = lm_precondition(g, history, damping=0.2, kappa=0.6, renormalize=False)
    assert rel_err(out, dense_solution(g, history, 0.2, 0.6, True)) < 1e-12


def test_renormalisation_keeps_norm_and_direction():
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(3, 4, 6, 6, generator=gen)
    history = [torch.randn(3, 4, 6, 6, generator=gen)]
    raw = lm_precondition(g, history, damping=0.5, kappa=1.0, renormalize=False)
    out = lm_precondition(g, history, damping=0.5, kappa=1.0)
    for b in range(3):
        assert float(out[b].norm()) == pytest.approx(float(g[b].norm()), rel=1e-6)
        assert rel_err(out[b], raw[b] * g[b].norm() / raw[b].norm()) < 1e-6


@pytest.mark.parametrize("kappa", [0.3, 0.7, 1.0])
def test_rank1_reproduces_reference_where_well_conditioned(kappa):
    gen = torch.Generator().manual_seed(3)
    cur = torch.randn(2, 4, 16, 16, generator=gen, dtype=torch.float64)
    prev = cur + 0.5 * torch.randn(2, 4, 16, 16, generator=gen, dtype=torch.float64)
    v = kappa * prev + (1 - kappa) * cur
    lamb = float((v * v).sum(dim=(1, 2, 3)).mean())  # lamb comparable to |v|^2
    expected = reference_lm_correct(prev, cur, lamb, kappa)
    out = lm_precondition(cur.float(), [prev.float()], damping=lamb, kappa=kappa,
                          damping_mode="absolute")
    assert rel_err(out, expected) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kappa_zero_returns_g_without_cancellation(dtype):
    # |g|^2 = 1e5 with lam = 1e-8: the reference formula cancels catastrophically here.
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(2, 4, 64, 64, generator=gen)
    g = (g * (1e5 ** 0.5) / g.flatten(1).norm(dim=1)[:, None, None, None]).to(dtype)
    prev = torch.randn(2, 4, 64, 64, generator=gen).to(dtype)
    out = lm_precondition(g, [prev], damping=1e-8, kappa=0.0, damping_mode="absolute")
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, g) < 1e-6
    out_rel = lm_precondition(g, [prev], damping=1e-8, kappa=0.0)
    assert rel_err(out_rel, g) < 1e-6


def test_reference_formula_defect_is_real():
    # Documents why we do not evaluate the formula as written: in float32 with kappa = 0 and
    # lamb << |v|^2 it is far from its exact value (g itself), while ours is exact.
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(1, 4, 64, 64, generator=gen)
    bad = reference_lm_correct(g, g, 1e-3, 0.0)
    assert rel_err(bad, g) > 0.1
    ours = lm_precondition(g, [g], damping=1e-3, kappa=0.0, damping_mode="absolute")
    assert rel_err(ours, g) < 1e-6


def test_guards_give_defined_output():
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(5, 3, 7, generator=gen)
    h = torch.randn(5, 3, 7, generator=gen)
    g[1] = 0.0                      # zero direction -> zero out
    h[2] = 0.0                      # zero history -> g unchanged
    g[3, 0, 0] = float("nan")       # non-finite input -> g unchanged (NaN stays NaN)
    h[4] = 3.0 * g[4]               # history parallel to g (rank deficient) -> finite
    out = lm_precondition(g, [h], damping=0.3, kappa=1.0)
    assert torch.equal(out[1], g[1])
    assert torch.equal(out[2], g[2])
    assert torch.isnan(out[3, 0, 0]) and torch.equal(out[3, 1:], g[3, 1:])
    assert torch.isfinite(out[4]).all()
    assert rel_err(out[4], g[4]) < 1e-6  # parallel history only rescales, renormalised -> g
    assert rel_err(out[0], lm_precondition(g[:1], [h[:1]], damping=0.3, kappa=1.0)[0]) < 1e-7


def test_rank_deficient_history_matches_dense_solve():
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(2, 30, generator=gen, dtype=torch.float64)
    h1 = torch.randn(2, 30, generator=gen, dtype=torch.float64)
    history = [h1, h1.clone(), 2 * h1]  # three columns spanning one direction
    out = lm_precondition(g, history, damping=0.1, kappa=0.8, renormalize=False)
    assert rel_err(out, dense_solution(g, history, 0.1, 0.8, True)) < 1e-10


def test_empty_history_and_huge_damping_are_identity():
    g = torch.randn(2, 3, 4)
    assert torch.equal(lm_precondition(g, []), g)
    out = lm_precondition(g, [torch.randn(2, 3, 4)], damping=1e30, kappa=1.0)
    assert rel_err(out, g) < 1e-7


def test_batch_independence():
    gen = torch.Generator().manual_seed(8)
    g = torch.randn(4, 2, 5, 5, generator=gen)
    history = [torch.randn(4, 2, 5, 5, generator=gen) for _ in range(2)]
    batched = lm_precondition(g, history, damping=0.7, kappa=0.9)
    for b in range(4):
        alone = lm_precondition(g[b:b + 1], [h[b:b + 1] for h in history], damping=0.7, kappa=0.9)
        assert torch.allclose(batched[b:b + 1], alone, rtol=1e-6, atol=1e-7)


def test_info_reports_cosine():
    g = torch.tensor([[1.0, 0.0]])
    h = torch.tensor([[1.0, 1.0]])
    out, info = lm_precondition(g, [h], damping=1.0, kappa=1.0, return_info=True)
    cos = float((out[0] @ g[0]) / (out[0].norm() * g[0].norm()))
    assert float(info["cos"][0]) == pytest.approx(cos, abs=1e-7)
    assert cos < 0.999
