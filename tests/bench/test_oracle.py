"""bench.oracle: every candidate of a calibration scored on the test noise (the chosen one as
the calibrated sampler itself scores), the field restricted to one scheduler, and the
oracles' arithmetic."""

import importlib

import pytest
import torch

from bench import oracle
from bench.exact import MixtureModel, mixture_64d
from bench.suite import Problem


def test_every_candidate_is_scored_and_the_chosen_one_as_the_sampler_runs_it():
    setup = importlib.import_module("lml_core.calibrate").Setup
    original = setup.report
    model = MixtureModel(mixture_64d(), False)
    noise = torch.randn(48, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    problem = Problem("mix64d", "karras", model, noise, ref_steps=24, log=lambda _: None)
    p = oracle.point(problem, 5, 1, best_rms=0.5, schedulers=["karras", "simple"])
    assert setup.report is original  # the hook is gone after the run
    (candidates,) = p["candidates"]
    (label,) = p["chosen_labels"]
    assert label in candidates and len(candidates) >= 2  # an LML fit and the pair unchanged
    # the chosen candidate's rollout is what the calibrated sampler runs
    assert candidates[label] == pytest.approx(p["chosen"][0], rel=1e-4)
    assert set(p["by_scheduler"]) == {"karras", "simple"}
    o = oracle.oracles(p)
    assert o["candidates"] == min(candidates.values()) <= o["chosen"] * (1 + 1e-4)
    assert 0 < o["in_sample"] < 10 and 0 < o["in_sample_squares"] < 10
    fixed = min(v[0] for v in p["by_scheduler"].values())
    assert o["fixed"] == fixed and o["schedulers"] == min(fixed, p["chosen"][0])


def test_the_oracles_take_the_best_per_seed_and_the_best_fixed_scheduler():
    p = {"data": "mix2d", "schedule": "karras", "nfe": 4, "chosen": [1.2, 0.9, 1.0],
         "chosen_labels": ["a", "b", "a"],
         "candidates": [{"a": 1.2, "b": 0.8}, {"a": 0.7, "b": 0.9}, {"a": 1.0, "b": 1.1}],
         "by_scheduler": {"karras": [1.0, 2.0, 0.5], "simple": [0.6, 0.8, 3.0]},
         "in_sample": 1.5, "in_sample_squares": 0.5}
    o = oracle.oracles(p)
    assert o["chosen"] == 1.0 and o["candidates"] == 0.8  # median of 0.8, 0.7, 1.0
    assert o["schedulers"] == 0.6  # median of 0.6, 0.8, 0.5 (the whole field's 0.9 > 0.8)
    assert (o["fixed_scheduler"], o["fixed"]) == ("simple", 0.8)  # karras' median is 1.0
    q = {**p, "data": "mix64d", "chosen": [0.5], "candidates": [{"a": 0.5}],
         "by_scheduler": {"karras": [0.25]}, "in_sample": 1.5, "in_sample_squares": 0.5}
    p["chosen"][1] = 0.55  # the whole field better than any one scheduler at seed 1
    assert oracle.oracles(p)["schedulers"] == 0.55  # median of 0.6, 0.55, 0.5
    p["chosen"][1] = 0.9
    lines = oracle.summary_lines([p, q])
    assert lines[2] == ("| mix2d | 1 | 1.000 (0) | 0.800 (0) | 0.600 (0) | 0.800 (0) | "
                        "1.500 (1) | 0.500 (0) |")
    assert lines[4] == ("| all | 2 | 0.707 (0) | 0.632 (0) | 0.387 (0) | 0.447 (0) | "
                        "1.500 (2) | 0.500 (0) |")
    p["chosen"] = [1.1, 1.1, 1.1]
    assert oracle.summary_lines([p])[2].startswith("| mix2d | 1 | 1.100 (1) |")


def test_least_squares_weighs_every_noise_fully_for_its_duration_only():
    from lml_core.objective import robust_loss, robust_weights

    errors = torch.tensor([1.0, 100.0], dtype=torch.float64)
    assert robust_weights(errors, 1.0)[1] < 0.05  # the far noise down-weighted
    with oracle.least_squares():
        assert torch.allclose(robust_weights(errors, 1.0), torch.ones(2, dtype=torch.float64))
        assert robust_loss(errors, 1.0) == pytest.approx(float(errors.pow(2).mean()), rel=1e-6)
    assert robust_weights(errors, 1.0)[1] < 0.05
