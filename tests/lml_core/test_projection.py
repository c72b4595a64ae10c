"""A built-in sampler's steps as LML coefficients (lml_core.projection): the identified linear
map is the sampler's own, an Adams-type sampler projects exactly, a fit started there saves
and runs as what it fitted, and the field gets those starts."""

import pytest
import torch

from lml_core import calibrate, sample_lml_calibrated
from lml_core.calibration import base_coefficients
from lml_core.objective import Fit
from lml_core.projection import BuiltinSteps, identified, projected, sampler_coefficients

from exact_model import MixtureDenoiser, karras_sigmas, plain_dpmpp_2m, plain_euler

DIM = 8


def plain_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """ComfyUI's sample_ipndm_v's steps (variable-step Adams-Bashforth in sigma), written
    with lml_core's coefficient formula."""
    s_in, history = x.new_ones([x.shape[0]]), []
    values = [float(s) for s in sigmas]
    for i in range(len(values) - 1):
        history.insert(0, (x - model(x, sigmas[i] * s_in)) / sigmas[i])
        w = base_coefficients("ipndm_v", values, i)
        x = x + (values[i + 1] - values[i]) * sum(c * d for c, d in zip(w, history))
    return x


def plain_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i] * s_in)) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
        model(x, sigmas[i] * s_in)  # a second call per step
    return x


class Replay:
    """A "model" that ignores its input and returns the given outputs in turn."""

    def __init__(self, outputs):
        self.outputs, self.k = outputs, 0

    def __call__(self, x, sigma, **_):
        self.k += 1
        return self.outputs[self.k - 1].to(x.dtype)


@pytest.mark.parametrize("sampler", [plain_dpmpp_2m, plain_euler, plain_ipndm_v])
def test_the_identified_map_is_the_samplers_own(sampler):
    """x_N = alpha x_0 + sum beta_m D_m for any outputs D_m: the sampler is linear in them."""
    sigmas = karras_sigmas(5).double()
    states, final = identified(sampler, None, [float(s) for s in sigmas])
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, DIM, dtype=torch.float64, generator=gen) * 80
    outputs = [torch.randn(3, DIM, dtype=torch.float64, generator=gen) for _ in range(5)]
    want = sampler(Replay(outputs), x0, sigmas)
    got = final[0] * x0 + sum(final[m + 1] * outputs[m] for m in range(5))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4 * float(want.abs().max()))
    assert len(states) == 5 and float(states[0][0]) == 1.0


def test_an_adams_sampler_projects_exactly():
    sigmas = [float(s) for s in karras_sigmas(6)]
    table = sampler_coefficients(plain_ipndm_v, None, sigmas, history=4)
    for i, row in enumerate(table):
        want = base_coefficients("ipndm_v", sigmas, i)
        assert row == pytest.approx(want + [0.0] * (len(row) - len(want)), abs=1e-5), i
    short = projected(*identified(plain_ipndm_v, None, sigmas), sigmas, history=2)
    assert max(len(row) for row in short) == 2


def test_a_sampler_of_two_calls_per_step_is_not_projected():
    assert sampler_coefficients(plain_heun, None, [float(s) for s in karras_sigmas(4)], 3) is None


def test_a_fit_from_a_projected_start_saves_and_runs_as_fitted():
    """The start's steps plus the fitted corrections, saved as euler + corrections, are the
    sampler the fit rolled out; at theta = 0 it is the built-in sampler itself, and where the
    timesteps move the steps are the sampler's own there."""
    model = MixtureDenoiser(dim=DIM, components=3, seed=1)
    sigmas = [float(s) for s in karras_sigmas(5)]
    denoise = lambda x, s: model(x, s * x.new_ones([x.shape[0]]))
    fit = Fit(denoise, sigmas, "euler", 4, True, False, 0.002,
              start=BuiltinSteps(plain_ipndm_v, None, 4))
    x = torch.randn(4, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 80
    fitted_on = {"steps": 5, "sigma_max": sigmas[0], "sigma_min": sigmas[-2],
                 "model_kind": "unknown", "sigmas": sigmas, "latent_shape": [DIM]}
    zero = torch.zeros(fit.size, dtype=torch.float64)
    builtin = plain_ipndm_v(model, x, torch.tensor(sigmas, dtype=torch.float64))
    # (identified in float32, as a host sampler's arithmetic may require)
    assert torch.allclose(fit.rollout(fit.plan(zero), x)[0], builtin, atol=1e-5)
    theta = 0.05 * torch.randn(fit.size, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(3))
    calibration = fit.calibration(theta, fitted_on, {})
    assert calibration.base == "euler"
    moved = fit.plan(torch.cat([theta[:fit.n_time], torch.zeros(fit.size - fit.n_time)]))
    assert moved[0] != sigmas and moved[1][2] == pytest.approx(
        base_coefficients("ipndm_v", moved[0], 2), abs=1e-5)
    ran = sample_lml_calibrated(model, x, torch.tensor(sigmas, dtype=torch.float64),
                                calibration=calibration)
    assert torch.allclose(ran, fit.rollout(fit.plan(theta), x)[0], atol=1e-8)


@pytest.mark.parametrize("builtin_starts", [True, False])
def test_the_field_has_lml_starts_from_the_builtins_steps(builtin_starts):
    """builtin_starts (default True): every one-call built-in that is not an LML base adds
    an LML start on each schedule; off, or with a base given, only the bases start."""
    model = MixtureDenoiser(dim=DIM, components=3, seed=1)
    x = torch.randn(16, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 80
    samplers = {"euler": plain_euler, "dpmpp_2m": plain_dpmpp_2m, "heun": plain_heun}
    opts = {"iterations": 1, "reference_steps": 8, "screen_rows": 0,
            "builtin_starts": builtin_starts}
    field = calibrate(model, x, karras_sigmas(4).double(), samplers=samplers, **opts)
    compared = field.report["heldout_rms_bases"]  # every LML start, unchanged
    assert ("lml(dpmpp_2m) + given" in compared) == builtin_starts
    assert "lml(euler) + given" in compared and not any("heun" in k for k in compared)
    based = calibrate(model, x, karras_sigmas(4).double(), samplers=samplers, base="ipndm",
                      **opts)
    assert not any("dpmpp_2m" in k for k in based.report["heldout_rms_bases"] if "lml" in k)


@pytest.mark.parametrize("race", [0, 2])
def test_the_lml_fit_runs_from_the_best_of_each_kind_and_race_keeps_one(race):
    """Both kinds of LML start (a base; a built-in's steps) get the fit; with race > 0 (and
    6 steps or more) only the better after that many iterations goes on; below 6 steps both
    finish."""
    model = MixtureDenoiser(dim=DIM, components=3, seed=1)
    x = torch.randn(16, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 80
    logs = []
    calibration = calibrate(model, x, karras_sigmas(6).double(), log=logs.append,
                            samplers={"dpmpp_2m": plain_dpmpp_2m}, iterations=5,
                            reference_steps=8, race=race)
    fitted = calibration.report["fitted_from"]["lml"]
    assert fitted[0].split(")")[0] in ("lml(euler", "lml(ipndm", "lml(ipndm_v")
    assert fitted[1:] == ["lml(dpmpp_2m) + given"]
    calibrated = [k for k in calibration.report["candidates"] if k.startswith("calibrated")]
    raced = [text for text in logs if text.startswith("LML fits after")]
    if race:
        assert len(raced) == 1 and f"after {race} iterations" in raced[0]
        assert len(calibrated) <= 1
        (label,) = calibrated or [None]
        if label is not None:
            assert label.removeprefix("calibrated ") in raced[0].split("going on from ")[1]
    else:
        assert not raced and len(calibrated) <= 2


def test_below_six_steps_both_lml_fits_finish():
    model = MixtureDenoiser(dim=DIM, components=3, seed=1)
    x = torch.randn(16, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 80
    logs = []
    calibrate(model, x, karras_sigmas(5).double(), log=logs.append, iterations=5,
              samplers={"dpmpp_2m": plain_dpmpp_2m}, reference_steps=8, race=2)
    assert not any(text.startswith("LML fits after") for text in logs)


def test_lml_start_name_reads_the_fields_start_labels():
    from lml_core.field import lml_start_name

    assert lml_start_name("lml(deis) + kl_optimal") == "deis"
    assert lml_start_name("lml(ipndm_v) + given") == "ipndm_v"
    assert lml_start_name("uni_pc + karras") is None and lml_start_name("") is None


def clamped_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler on the model's output clamped to [-1, 1]: on the unit-vector probe it is euler,
    elsewhere it is not linear in the outputs."""
    return plain_euler(lambda x, sigma: model(x, sigma).clamp(-1, 1), x, sigmas)


def test_a_sampler_that_is_not_linear_in_the_outputs_has_no_map():
    sigmas = [float(s) for s in karras_sigmas(5)]
    assert identified(plain_euler, None, sigmas) is not None
    assert identified(clamped_euler, None, sigmas) is None


def test_twins_are_the_lml_starts_whose_map_is_a_pairs_own():
    """lml(euler) is the euler pair on the same schedule; not on another one, and neither
    the approximately projected dpmpp_2m nor a sampler off euler by 1e-3 is anyone's twin."""
    from lml_core.field import twin_starts
    from lml_core.objective import Fit
    from lml_core.sigma_fit import SigmaFit

    def slow_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return plain_euler(model, x, sigmas) * (1 + 1e-3)

    karras = karras_sigmas(5).double().tolist()
    other = list(karras)
    other[2] *= 1.1
    starts = {}
    for schedule, sigmas in (("karras", karras), ("other", other)):
        for base in ("euler", "ipndm"):
            starts[f"lml({base}) + {schedule}"] = Fit(None, sigmas, base, 3, True, False, 0.002)
    for name, sampler in (("euler", plain_euler), ("dpmpp_2m", plain_dpmpp_2m),
                          ("slow", slow_euler)):
        starts[f"{name} + karras"] = SigmaFit(sampler, None, karras, False, 0.002)
    steps = BuiltinSteps(plain_dpmpp_2m, None, 3)
    starts["lml(dpmpp_2m) + karras"] = Fit(None, karras, "euler", 3, True, False, 0.002,
                                           start=steps)
    assert twin_starts(starts, None) == {"lml(euler) + karras": "euler + karras"}
