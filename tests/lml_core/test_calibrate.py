"""lml_core.calibrate: the calibrated sampler's algebra, its fit on an exact-score model, the
JSON round trip and the errors a user can meet."""

import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lml_core import CALIBRATE_DEFAULTS, Calibration, calibrate, sample_lml_calibrated
from lml_core.calibration import base_coefficients
from lml_core.calibration_text import MAX_CORRECTION
from lml_core.objective import Fit
from lml_core.reference import Evaluator, Reference, reference_grid

from exact_model import MixtureDenoiser, flow_sigmas, karras_sigmas

DIM = 16


def noise(n, seed, scale=80.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, dtype=torch.float64, generator=generator) * scale


def rms(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def zero_calibration(base, sigmas, history=3, **fitted_on):
    sig = [float(s) for s in sigmas]
    steps = len(sig) - 1
    return Calibration(base=base, sigmas=sig,
                       corrections=[[0.0] * min(i + 1, history) for i in range(steps)],
                       fitted_on={"steps": steps, "sigma_max": sig[0], "sigma_min": sig[-2],
                                  "model_kind": "eps", "sigmas": sig, "latent_shape": [DIM],
                                  **fitted_on})


FITTED = {"trajectory": 1.0}  # the fixture's options (its docstring says why)


@pytest.fixture(scope="module")
def fitted():
    """A 5-step calibration on 32 noises of a 16-D mixture (Karras schedule), the states on
    the way weighted 1: at the default 0.3 the fit lowers the typical error as much but ends
    more of these noises in another component (RMS 0.97x its base's on the 200 fresh noises
    below, 0.61x at 1), the exact mixtures' trade-off in docs/bench/calibrated.md."""
    model = MixtureDenoiser(dim=DIM, components=4, spread=1.0, seed=3)
    sigmas = karras_sigmas(5).double()
    return model, sigmas, calibrate(model, noise(32, 1), sigmas, **FITTED)


def test_multistep_coefficients_are_consistent():
    """Up to third order each base's coefficients sum to 1 (a constant direction is stepped
    exactly) and ipndm_v's equal ipndm's on equal steps; the final step denoises.  (ComfyUI's
    4th-order ipndm_v is not an exact Adams-Bashforth method: its sums are off by ~1e-3; the
    host comparison is in tests/bench/test_calibrated_bench.py.)"""
    uniform = [10.0 - k for k in range(10)] + [0.0]
    karras = karras_sigmas(10).tolist()
    for base in ("euler", "ipndm", "ipndm_v"):
        for i in range(3):
            assert math.isclose(sum(base_coefficients(base, karras, i)), 1.0, rel_tol=1e-12)
    for i in range(3):
        assert base_coefficients("ipndm_v", uniform, i) == pytest.approx(
            base_coefficients("ipndm", uniform, i), rel=1e-12)
    assert base_coefficients("ipndm", karras, 9) == [1.0]
    assert base_coefficients("ipndm_v", karras, 9) == [1.0]


def test_reference_is_converged_and_interpolates_its_trajectory():
    model = MixtureDenoiser(dim=DIM, components=3, seed=1)
    x = noise(6, 2)
    evaluator = Evaluator(model, {}, torch.float64)
    fine = Reference(evaluator, x, reference_grid(80.0, 0.002, 64, False), False)
    coarse = Reference(evaluator, x, reference_grid(80.0, 0.002, 32, False), False)
    assert rms(coarse.final, fine.final) < 1e-3 * float(fine.final.std())
    # At a node the trajectory is the stored state; between nodes it matches a finer solve.
    node = fine.grid[10]
    assert torch.equal(fine.at(node), fine.states[10])
    between = coarse.grid[7] * 0.4 + coarse.grid[8] * 0.6
    assert rms(coarse.at(between), fine.at(between)) < 1e-3 * float(fine.at(between).std())


@pytest.mark.parametrize("flow", [False, True])
def test_reference_converges_to_the_exact_gaussian_solution_at_fourth_order(flow):
    """For data N(mu, s^2 I) the probability-flow ODE is solved exactly: the noise keeps its
    quantile, x(sigma) = alpha mu + (x_0 - alpha_0 mu) sqrt((alpha^2 s^2 + sigma^2) /
    (alpha_0^2 s^2 + sigma_0^2)).  The reference's error falls like the fourth power of its
    step (the flow's first, first-order step from sigma 1 included)."""
    model = MixtureDenoiser(dim=DIM, components=1, flow=flow, seed=3)
    mu, var = model.mixture.means[0], float(model.mixture.variances[0, 0])
    start, floor = (1.0, 0.002) if flow else (80.0, 0.002)
    x = noise(5, 4, scale=start)

    def alpha(sigma):
        return 1.0 - sigma if flow else 1.0

    def spread(sigma):
        return math.sqrt(alpha(sigma) ** 2 * var + sigma**2)

    exact = alpha(floor) * mu + (x - alpha(start) * mu) * spread(floor) / spread(start)
    exact_final = model(exact, torch.full((5,), floor, dtype=torch.float64))
    errors = []
    for steps in (16, 32, 64):
        reference = Reference(Evaluator(model, {}, torch.float64), x,
                              reference_grid(start, floor, steps, flow), flow)
        errors.append(rms(reference.final, exact_final))
    assert errors[1] < errors[0] / 10 and errors[2] < errors[1] / 10, errors
    assert errors[2] < 1e-5 * float(exact_final.std()), errors  # 2e-6 VE, 6e-6 flow


def test_forked_jacobian_equals_direct_finite_differences():
    """The Jacobian's columns come from rollouts forked mid-trajectory; they equal whole
    rollouts with the parameter moved."""
    model = MixtureDenoiser(dim=DIM, components=3, seed=2)
    x = noise(4, 3)
    evaluator = Evaluator(model, {}, torch.float64)
    sigmas = karras_sigmas(5).double().tolist()
    reference = Reference(evaluator, x, reference_grid(80.0, 0.002, 16, False), False)
    # The floor below the schedule's end, so that every timestep (the last too) moves freely.
    fit = Fit(evaluator, sigmas, "ipndm_v", 3, True, False, 0.001, trajectory=1.0)
    generator = torch.Generator().manual_seed(0)
    theta = 0.01 * torch.randn(fit.size, dtype=torch.float64, generator=generator)
    residual, jac = fit.jacobian(theta, x, reference, 1e-5)
    for p in range(fit.size):
        moved = theta.clone()
        moved[p] += 1e-5
        plan = fit.plan(moved)
        direct = fit.residual(fit.rollout(plan, x), plan[0], reference)
        assert torch.allclose(jac[:, p], (direct - residual) / 1e-5, rtol=1e-6, atol=1e-9)


def test_calibration_beats_its_base_on_fresh_noise(fitted):
    """Fitted on 24 noises, chosen on 8 held out: on 200 noises it never saw, the calibrated
    sampler is closer to the converged solution than its base at the same step count."""
    model, sigmas, calibration = fitted
    assert calibration.report["calibrated"]
    assert calibration.report["heldout_rms"] < calibration.report["heldout_rms_base"]
    x = noise(200, 99)
    evaluator = Evaluator(model, {}, torch.float64)
    reference = Reference(evaluator, x, reference_grid(80.0, 0.002, 64, False), False).final
    base = zero_calibration(calibration.base, sigmas)
    base_error = rms(sample_lml_calibrated(model, x, sigmas, calibration=base), reference)
    calibrated_error = rms(sample_lml_calibrated(model, x, sigmas, calibration=calibration),
                           reference)
    assert calibrated_error < 0.8 * base_error


def test_report_counts_the_model_calls(fitted):
    model, sigmas, calibration = fitted
    report = calibration.report
    assert report["model_calls"] > 0 and report["model_evaluations"] >= report["model_calls"]
    assert report["samples"] == {"fit": 16, "heldout": 8, "test": 8}
    assert set(report["heldout_rms_bases"]) == {f"lml({base}) + given"
                                                for base in ("euler", "ipndm", "ipndm_v")}
    assert set(report["test_rms_bases"]) == set(report["heldout_rms_bases"])


def test_test_noise_chooses_nothing_and_scores_the_result(fitted):
    """The last quarter of the noise is the test part: other test noise gives the same
    calibration, and the report's test RMS is the calibrated sampler's error on those noises
    against a reference computed here."""
    model, sigmas, calibration = fitted
    x = noise(32, 1)
    x[24:] = noise(8, 55)
    again = calibrate(model, x, sigmas, **FITTED)
    assert again.sigmas == calibration.sigmas and again.corrections == calibration.corrections
    assert again.report["test_rms"] != calibration.report["test_rms"]
    grid = reference_grid(float(sigmas[0]), 0.002, CALIBRATE_DEFAULTS["reference_steps"], False)
    reference = Reference(Evaluator(model, {}, torch.float64), x, grid, False).final[24:]
    out = sample_lml_calibrated(model, x[24:], sigmas, calibration=again)
    errors = (out - reference).pow(2).mean(1).sqrt()
    assert math.isclose(again.report["test_rms"], float(errors.pow(2).mean().sqrt()),
                        rel_tol=1e-9)


def test_json_round_trip_is_exact(fitted):
    model, sigmas, calibration = fitted
    text = calibration.to_json()
    assert len(text.encode()) < 8192
    again = Calibration.from_json(text)
    assert again == calibration
    x = noise(5, 7)
    assert torch.equal(sample_lml_calibrated(model, x, sigmas, calibration=calibration),
                       sample_lml_calibrated(model, x, sigmas, calibration=again))


def test_fitted_on_records_the_whole_schedule_and_the_latent_shape(fitted):
    _, sigmas, calibration = fitted
    assert calibration.format == "lml-calibration/2"
    assert calibration.fitted_on["sigmas"] == sigmas.tolist()
    assert calibration.fitted_on["latent_shape"] == [DIM]
    assert calibration.fitted_on["sigma_max"] == 80.0 and calibration.steps == 5


def test_a_schedule_it_was_not_fitted_for_is_refused(fitted):
    model, sigmas, calibration = fitted
    with pytest.raises(ValueError, match=r"fitted for 5 steps.*given 8 steps"):
        sample_lml_calibrated(model, noise(2, 1), karras_sigmas(8).double(),
                              calibration=calibration)
    other_range = karras_sigmas(5).double() * 0.5
    with pytest.raises(ValueError, match=r"sigma 80 -> 0.002 -> 0.*sigma 40"):
        sample_lml_calibrated(model, noise(2, 1), other_range, calibration=calibration)


def test_another_scheduler_with_the_same_steps_and_ends_is_refused(fitted):
    """Exponential (log-uniform) sigmas share Karras's step count and ends: every sigma is
    compared, and the error names the fitted scheduler and both lists."""
    model, sigmas, calibration = fitted
    exponential = torch.cat([torch.linspace(sigmas[0].log(), sigmas[-2].log(), 5).exp(),
                             torch.zeros(1, dtype=torch.float64)])
    exponential[0], exponential[-2] = sigmas[0], sigmas[-2]  # the same ends, to the bit
    named = replace(calibration, fitted_on={**calibration.fitted_on, "scheduler": "karras"})
    with pytest.raises(ValueError) as refused:
        sample_lml_calibrated(model, noise(2, 1), exponential, calibration=named)
    message = str(refused.value)
    assert "fitted for 5 steps of the karras schedule" in message and "given 5 steps" in message
    assert f"{sigmas[1].item():.6g}" in message and f"{exponential[1].item():.6g}" in message
    assert "sigma 1 differs" in message
    # Within SIGMA_RTOL (float32 sigmas of the same scheduler) it runs.
    near = sigmas * (1 + 1e-6)
    near[-1] = 0
    assert torch.isfinite(sample_lml_calibrated(model, noise(2, 1), near, calibration=named)).all()


def test_long_schedules_are_shortened_in_the_error():
    calibration = zero_calibration("euler", karras_sigmas(30).double())
    with pytest.raises(ValueError) as refused:
        calibration.check_schedule(karras_sigmas(30).double() * 0.9)
    message = str(refused.value)
    assert message.count("...") == 2 and len(message) < 600


FORMAT_1 = Path(__file__).parent / "calibration_format_1.json"


def test_a_format_1_calibration_still_loads_and_keeps_its_ends_only_check():
    """A calibration saved before format 2 (the saved example's at 04cb3d6: 8 Karras steps of
    SD1.5, no full schedule) loads, round-trips as format 1, and is checked on its step count
    and ends: the middle of the schedule is not known."""
    calibration = Calibration.from_json(FORMAT_1.read_text())
    assert calibration.format == "lml-calibration/1" and "sigmas" not in calibration.fitted_on
    assert Calibration.from_json(calibration.to_json()) == calibration
    top, bottom = calibration.fitted_on["sigma_max"], calibration.fitted_on["sigma_min"]
    middle = torch.logspace(math.log10(top), math.log10(bottom), 8, dtype=torch.float64)
    ends_match = torch.cat([middle, torch.zeros(1, dtype=torch.float64)])
    out = sample_lml_calibrated(lambda x, s, **_: 0.5 * x / (1 + s[:, None] ** 2), noise(2, 4),
                                ends_match, calibration=calibration)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"fitted for 8 steps.*format-1.*given 7 steps"):
        calibration.check_schedule(torch.cat([middle[1:], torch.zeros(1)]))


def test_another_latent_size_is_sampled_with_a_warning(caplog):
    calibration = zero_calibration("euler", karras_sigmas(3).double())

    def model(x, sigma, **_):
        return 0.5 * x

    with caplog.at_level(logging.WARNING):
        same = sample_lml_calibrated(model, noise(2, 1), karras_sigmas(3).double(),
                                     calibration=calibration)
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        other = sample_lml_calibrated(model, noise(2, 1).reshape(2, 4, 4),
                                      karras_sigmas(3).double(), calibration=calibration)
    (record,) = caplog.records
    assert "[16]" in record.getMessage() and "[4, 4]" in record.getMessage()
    assert torch.equal(other.reshape(2, DIM), same)


def test_sampler_calls_back_every_step_and_passes_extra_args(fitted):
    model, sigmas, calibration = fitted
    seen = []

    def spy(x, sigma, **extra_args):
        seen.append(extra_args)
        return model(x, sigma)

    steps = []
    sample_lml_calibrated(spy, noise(2, 5), sigmas, extra_args={"seed": 3},
                          callback=steps.append, calibration=calibration)
    assert [s["i"] for s in steps] == list(range(5))
    assert all(extra == {"seed": 3} for extra in seen) and len(seen) == 5


def test_float32_latents_come_back_in_float32(fitted):
    model, sigmas, calibration = fitted
    out = sample_lml_calibrated(model, noise(2, 5).float(), sigmas.float(),
                                calibration=calibration)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_nan_model_output_is_an_error(fitted):
    _, sigmas, calibration = fitted

    def broken(x, sigma, **_):
        return torch.full_like(x, float("nan"))

    with pytest.raises(FloatingPointError, match="NaN or inf at step 1"):
        sample_lml_calibrated(broken, noise(2, 5), sigmas, calibration=calibration)


def test_flow_model_calibration():
    """Flow (CONST) models: the sampler's timesteps stay in (0, 1) and it beats its base."""
    model = MixtureDenoiser(dim=DIM, components=3, flow=True, seed=4, spread=1.0)
    sigmas = flow_sigmas(4).double()
    x = noise(32, 8, scale=1.0)
    calibration = calibrate(model, x, sigmas, reference_floor=1e-3)
    assert all(0 < s < 1 for s in calibration.sigmas[1:-1])
    assert calibration.report["heldout_rms"] <= calibration.report["heldout_rms_base"]


@pytest.mark.parametrize("options, message", [
    ({"rank": 2}, "unknown option"),
    ({"history": 0}, "history must be a whole number"),
    ({"heldout": 1.0}, "heldout must be between"),
    ({"base": "heun"}, "base must be 'auto' or one of"),
    ({"regularization": -1}, "regularization must be"),
    ({"history": 5}, "history must be at most 4"),
])
def test_bad_options_are_named(options, message):
    model = MixtureDenoiser(dim=DIM)
    with pytest.raises(ValueError, match=message):
        calibrate(model, noise(4, 1), karras_sigmas(3).double(), **options)


def test_defaults_are_documented():
    doc = calibrate.__doc__
    for name in CALIBRATE_DEFAULTS:
        assert name in doc


def test_noise_without_sample_values_is_refused_before_the_fit():
    model = MixtureDenoiser(dim=DIM)
    with pytest.raises(ValueError, match=r"noise of shape \[4\]"):
        calibrate(model, torch.zeros(4, dtype=torch.float64), karras_sigmas(3).double())


def test_the_fit_never_steps_to_corrections_a_calibration_cannot_hold():
    """Fit.plan refuses corrections beyond MAX_CORRECTION, so Levenberg-Marquardt never accepts
    them and every fit can be saved."""
    fit = Fit(None, karras_sigmas(3).double().tolist(), "euler", 2, True, False, 0.002)
    theta = torch.zeros(fit.size, dtype=torch.float64)
    theta[fit.offsets[1]] = MAX_CORRECTION
    assert fit.plan(theta) is not None
    theta[fit.offsets[1]] = MAX_CORRECTION * 1.01
    assert fit.plan(theta) is None
