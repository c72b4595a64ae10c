"""bench.gradient_fit: the start is a host sampler's exact map, the fitted family starts where
that map is, the fit lowers the error it fits, and cond/uncond apart starts as the guided
model."""

import pytest
import torch

from bench import gradient_fit, suite
from bench.digits import CFGDigitsModel, DigitsDenoiser
from bench.exact import MixtureModel, mixture_2d
from bench.suite import Problem


def mixture_problem(kind="karras", samples=64):
    noise = torch.randn(samples, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return Problem("mix2d", kind, MixtureModel(mixture_2d(), kind == "flow"), noise,
                   ref_steps=24, log=lambda _: None)


@pytest.mark.parametrize("kind", ["karras", "flow"])
def test_the_start_is_the_host_samplers_own_rollout(kind):
    problem = mixture_problem(kind)
    denoise, _ = gradient_fit.denoisers(problem)
    x = problem.x_start.double()
    sigmas, rows, label = gradient_fit.start(problem, 5, "uni_pc", "kl_optimal", denoise, x,
                                             problem.reference.double())
    sampler, scheduler = label.split(" + ")
    ours = gradient_fit.linear_rollout(denoise, x, sigmas, rows)
    host, calls = suite.run_sampler(problem.model, problem.x_start, kind, sampler, 5,
                                    scheduler=scheduler)
    assert calls == 5
    assert torch.allclose(ours, host.double(), atol=1e-5)
    # and it is the best of the starts on that noise: no other start scores lower
    other = gradient_fit.start(problem, 5, "euler", "simple", denoise, x,
                               problem.reference.double())
    assert other[2] == label


def test_the_fit_starts_at_the_start_and_lowers_its_error():
    problem = mixture_problem()
    best = {"best_sampler": "uni_pc", "best_scheduler": "kl_optimal", "best_rms": 1.0}
    untouched = gradient_fit.fit(problem, 4, best, iterations=0)
    assert untouched["ratio"] == pytest.approx(untouched["start_ratio"], rel=1e-12)
    denoise, _ = gradient_fit.denoisers(problem)
    sigmas, rows, _ = gradient_fit.start(problem, 4, "uni_pc", "kl_optimal", denoise,
                                         problem.x_start.double(), problem.reference.double())
    error = gradient_fit.linear_rollout(denoise, problem.x_start.double(), sigmas, rows)
    assert untouched["start_ratio"] == pytest.approx(
        float((error - problem.reference).pow(2).mean().sqrt()), rel=1e-9)
    fitted = gradient_fit.fit(problem, 4, best, iterations=150)
    assert fitted["ratio"] < 0.9 * untouched["ratio"]  # in sample: the error it fits
    assert fitted["evaluations"] == 150 * 4 * 64
    out = gradient_fit.fit(problem, 4, best, iterations=100, size=16, seed=1)
    assert out["evaluations"] == 100 * 4 * 12  # three quarters of 16 fit


def test_cond_and_uncond_apart_start_as_the_guided_model():
    torch.manual_seed(0)
    net = DigitsDenoiser(0.5, width=16, depth=1, freqs=2)
    problem = Problem("digits cfg 6", "karras", CFGDigitsModel(net, False, 6.0),
                      torch.randn(20, 64, dtype=torch.float64), ref_steps=8, log=lambda _: None)
    denoise, parts = gradient_fit.denoisers(problem)
    x = problem.x_start.double()
    sigmas, rows, _ = gradient_fit.start(problem, 4, "euler", "karras", denoise, x,
                                         problem.reference.double())
    guided = gradient_fit.Family(sigmas, rows).rollout(x, denoise, parts, False)
    apart = gradient_fit.Family(sigmas, rows, 6.0).rollout(x, denoise, parts, False)
    assert torch.allclose(guided, apart, atol=1e-4)
    assert torch.allclose(guided, gradient_fit.linear_rollout(denoise, x, sigmas, rows),
                          atol=1e-9)


def test_the_summary_takes_medians_and_leaves_missing_columns_empty():
    def fits(size, split, ratios):
        return [{"size": size, "split": split, "ratio": r, "evaluations": 10, "start": "s"}
                for r in ratios]
    p = {"data": "mix2d", "schedule": "karras", "nfe": 4, "calibrated": 1.1,
         "calibrated_evaluations": 5, "fits": fits(0, False, [0.5]) + fits(32, False,
                                                                          [2.0, 0.4, 1.0])}
    q = {**p, "data": "digits cfg 6", "calibrated": 0.4,
         "fits": p["fits"] + fits(0, True, [0.25]) + fits(32, True, [1.0, 1.0, 1.0])}
    assert gradient_fit.column(p, 32) == 1.0 and gradient_fit.column(p, 0, True) is None
    lines = gradient_fit.summary_lines([p, q])
    assert lines[2] == "| mix2d | 1 | 1.100 (1) | 0.500 (0) | 1.000 (0) | - | - |"
    assert lines[4] == "| all | 2 | 0.663 (1) | 0.500 (0) | 1.000 (0) | 0.250 (0) | 1.000 (0) |"
    page = gradient_fit.markdown({"meta": {"command": "c", "seconds": 1, "iterations": 2,
                                           "seeds": 3}, "points": [p, q]})
    assert "| mix2d/karras 4 NFE | 1.100 (5) | s | 0.500 (10) | 1.000 (10) | - | - |" in page
