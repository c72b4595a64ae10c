"""The LML fit on a built-in sampler's exact linear map (lml_core.linear_fit): at theta = 0 it
is the sampler itself, exactly, where the LML multistep form only approximates it (dpmpp_2m's
exponential steps); its forked Jacobian is the full rollouts' differences; the calibration it
saves ("lml_linear") runs as fitted and round-trips; the field uses it for built-in starts."""

import sys

import pytest
import torch

from lml_core import Calibration, calibrate, sample_lml_calibrated
from lml_core.calibration_text import LINEAR_SAMPLER
from lml_core.field import start_kind, twin_starts
from lml_core.linear_fit import LinearFit
from lml_core.objective import Fit
from lml_core.projection import BuiltinSteps
from lml_core.reference import Reference
from lml_core.sigma_fit import SigmaFit

from exact_model import MixtureDenoiser, flow_sigmas, karras_sigmas, plain_dpmpp_2m, plain_euler

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from hostile_calibrations import LINEAR_ROWS, good  # noqa: E402

DIM = 8


def setting(flow=False, steps=5):
    model = MixtureDenoiser(dim=DIM, components=3, seed=1, flow=flow)
    sigmas = [float(s) for s in (flow_sigmas(steps) if flow else karras_sigmas(steps))]
    denoise = lambda x, s: model(x, s * x.new_ones([x.shape[0]]))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, DIM, dtype=torch.float64, generator=gen) * sigmas[0]
    return model, sigmas, denoise, x


@pytest.mark.parametrize("flow", [False, True])
def test_at_zero_it_is_the_sampler_itself_where_the_projection_is_not(flow):
    model, sigmas, denoise, x = setting(flow)
    floor = sigmas[-2] * 0.5
    exact = LinearFit(denoise, plain_dpmpp_2m, None, sigmas, 3, True, flow, floor)
    projected = Fit(denoise, sigmas, "euler", 3, True, flow, floor,
                    start=BuiltinSteps(plain_dpmpp_2m, None, 3))
    builtin = plain_dpmpp_2m(model, x, torch.tensor(sigmas, dtype=torch.float64))
    zero = torch.zeros(exact.size, dtype=torch.float64)
    ours = exact.rollout(exact.plan(zero), x)[0]
    scale = float(builtin.abs().max())
    # (the map is identified in float32, as a host sampler's arithmetic may require)
    assert float((ours - builtin).abs().max()) < 1e-5 * scale
    theirs = projected.rollout(projected.plan(torch.zeros(projected.size,
                                                          dtype=torch.float64)), x)[0]
    assert float((theirs - builtin).abs().max()) > 100 * float((ours - builtin).abs().max())


@pytest.mark.parametrize("flow", [False, True])
def test_the_forked_jacobian_is_the_full_rollouts_differences(flow):
    model, sigmas, denoise, x = setting(flow)
    floor = sigmas[-2] * 0.5
    fit = LinearFit(denoise, plain_dpmpp_2m, None, sigmas, 3, True, flow, floor, trajectory=1.0)
    grid = [sigmas[0] * (floor / sigmas[0]) ** (k / 32) for k in range(33)]
    if flow:
        grid = [min(s, 0.999) for s in grid]
    reference = Reference(denoise, x, grid, flow)
    theta = 0.02 * torch.randn(fit.size, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(5))
    eps = 1e-4
    residual, jac = fit.jacobian(theta, x, reference, eps)
    plan = fit.plan(theta)
    full = fit.residual(fit.rollout(plan, x), plan[0], reference)
    assert torch.allclose(residual, full, rtol=0, atol=1e-12)
    for p in range(fit.size):
        moved = theta.clone()
        moved[p] += eps
        fork = fit.plan(moved)
        want = (fit.residual(fit.rollout(fork, x), fork[0], reference) - full) / eps
        assert torch.allclose(jac[:, p], want, rtol=1e-9, atol=1e-9), p
    assert fit.size == (len(sigmas) - 2) + sum(1 + min(k + 1, 3) for k in range(len(sigmas) - 1))


def test_its_calibration_runs_as_fitted_and_round_trips():
    model, sigmas, denoise, x = setting()
    fit = LinearFit(denoise, plain_dpmpp_2m, None, sigmas, 3, True, False, 0.002)
    theta = 0.05 * torch.randn(fit.size, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(3))
    fitted_on = {"steps": 5, "sigma_max": sigmas[0], "sigma_min": sigmas[-2],
                 "model_kind": "unknown", "sigmas": sigmas, "latent_shape": [DIM]}
    calibration = fit.calibration(theta, fitted_on, {"chosen": "test"})
    assert calibration.sampler == LINEAR_SAMPLER and calibration.base == ""
    assert calibration.sigmas != sigmas  # the timesteps moved
    # the corrections free each row's sum (a consistent sampler's is 1)
    assert any(abs(sum(row) - 1) > 1e-3 for row in calibration.corrections)
    seen = []
    ran = sample_lml_calibrated(model, x, torch.tensor(sigmas, dtype=torch.float64),
                                calibration=calibration, callback=seen.append)
    assert torch.allclose(ran, fit.rollout(fit.plan(theta), x)[0], rtol=0, atol=1e-10)
    assert [step["i"] for step in seen] == list(range(5))
    assert Calibration.from_json(calibration.to_json()) == calibration


def test_euler_written_as_rows_is_euler():
    """The rows' meaning, spelled out: hostile_calibrations' LINEAR_ROWS are euler's map."""
    from hostile_calibrations import SIGMAS

    model = MixtureDenoiser(dim=DIM, components=3, seed=1)
    calibration = Calibration(**good(sampler=LINEAR_SAMPLER, base="", corrections=LINEAR_ROWS,
                                     **{"fitted_on.latent_shape": [DIM]}))
    x = torch.randn(4, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigmas = torch.tensor(SIGMAS, dtype=torch.float64)
    want = plain_euler(model, x * SIGMAS[0], sigmas)
    got = sample_lml_calibrated(model, x * SIGMAS[0], sigmas, calibration=calibration)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_the_field_starts_linear_fits_from_the_builtins_and_twins_them():
    model, sigmas, denoise, x = setting()
    starts = {"dpmpp_2m + karras": SigmaFit(plain_dpmpp_2m, None, sigmas, False, 0.002),
              "lml(dpmpp_2m) + karras": LinearFit(denoise, plain_dpmpp_2m, None, sigmas, 3,
                                                  True, False, 0.002)}
    assert twin_starts(starts, None) == {"lml(dpmpp_2m) + karras": "dpmpp_2m + karras"}
    assert start_kind(starts["lml(dpmpp_2m) + karras"]) == "lml from a built-in"
    noise = torch.randn(16, DIM, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(4)) * 80
    for linear in (True, False):
        logs = []
        calibration = calibrate(model, noise, karras_sigmas(4).double(), log=logs.append,
                                samplers={"dpmpp_2m": plain_dpmpp_2m}, iterations=3,
                                reference_steps=8, screen_rows=0, linear_fits=linear)
        assert "lml(dpmpp_2m) + given" in calibration.report["fitted_from"]["lml"]
        if linear:  # the start is the pair itself: run once
            twinned = [text for text in logs if "run once" in text]
            assert "lml(dpmpp_2m) + given = dpmpp_2m + given" in twinned[0]
        if calibration.report["chosen"].startswith("calibrated lml(dpmpp_2m)"):
            assert calibration.sampler == (LINEAR_SAMPLER if linear else "lml")
