"""LML sampler loops: convergence to a reference ODE solution, off-switch equivalence with the
plain solvers, batch independence, determinism, no leaked state, shapes, dtypes, errors."""

import math

import pytest
import torch

from lml_core import (
    SAMPLERS,
    SOLVER_DEFAULTS,
    sample_lml_dpmpp_2m,
    sample_lml_euler,
    sample_lml_euler_ancestral,
)

from exact_model import (
    MixtureDenoiser,
    flow_sigmas,
    karras_sigmas,
    plain_dpmpp_2m,
    plain_euler,
    reference_solution,
)

SCHEDULES = {"karras": (False, karras_sigmas), "flow": (True, flow_sigmas)}


def start_noise(flow, batch=64, dim=8, seed=0):
    noise = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))
    return noise if flow else noise * 80.0


def rms(a, b):
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


CONVERGING = {
    "lml_euler": (sample_lml_euler, {}),
    "lml_dpmpp_2m": (sample_lml_dpmpp_2m, {}),
    "lml_dpmpp_2m_direction": (sample_lml_dpmpp_2m, {"correct_on": "direction"}),
    "lml_euler_adaptive": (sample_lml_euler, {"damping_mode": "adaptive", "omega": 0.75}),
    "lml_euler_auto": (sample_lml_euler, {"damping_mode": "adaptive", "omega": "auto"}),
    "lml_euler_ancestral_eta0": (sample_lml_euler_ancestral, {"eta": 0.0}),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", sorted(CONVERGING))
def test_converges_to_reference_solution(name, schedule):
    flow, make_sigmas = SCHEDULES[schedule]
    sampler, options = CONVERGING[name]
    # Well separated modes: a sample on a basin boundary could otherwise switch modes under any
    # O(h) perturbation and dominate the RMS of a 64-sample test.
    model = MixtureDenoiser(flow=flow, spread=3.0)
    x = start_noise(flow)
    full = make_sigmas(1000)
    reference = reference_solution(model, x, float(full[0]), float(full[-2]))
    errors = [rms(sampler(model, x, make_sigmas(n), disable=True, flow=flow, **options), reference)
              for n in (5, 10, 20, 50, 100)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 * errors[0], errors  # at least first order


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("off", [{"rank": 0}, {"start_percent": 1.0, "end_percent": 1.0},
                                 {"damping": 1e30, "damping_mode": "relative"}])
def test_correction_off_is_the_plain_solver(schedule, off):
    flow, make_sigmas = SCHEDULES[schedule]
    model = MixtureDenoiser(flow=flow)
    x = start_noise(flow, batch=16)
    sigmas = make_sigmas(12)
    for lml, plain in ((sample_lml_euler, plain_euler), (sample_lml_dpmpp_2m, plain_dpmpp_2m)):
        expected = plain(model, x, sigmas)
        got = lml(model, x, sigmas, disable=True, **off)
        assert rms(got, expected) <= 1e-6 * float(expected.double().pow(2).mean().sqrt())


def test_correction_on_changes_the_result():
    model = MixtureDenoiser()
    x = start_noise(False, batch=16)
    sigmas = karras_sigmas(8)
    lml = sample_lml_euler(model, x, sigmas, disable=True)
    assert rms(lml, plain_euler(model, x, sigmas)) > 1e-3


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_batch_independence_determinism_and_no_leaked_state(name):
    sampler = SAMPLERS[name]
    model = MixtureDenoiser()
    x = start_noise(False, batch=6).reshape(6, 2, 4)
    sigmas = karras_sigmas(7)
    opts = {"eta": 0.0} if "ancestral" in name else {}
    first = sampler(model, x, sigmas, disable=True, **opts)
    second = sampler(model, x, sigmas, disable=True, **opts)
    assert torch.equal(first, second)  # determinism, and nothing carried over between runs
    for b in range(6):
        alone = sampler(model, x[b:b + 1], sigmas, disable=True, **opts)
        assert torch.allclose(alone, first[b:b + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flow", [False, True])
def test_ancestral_noise_is_seeded_apart_from_initial_noise(flow):
    model = MixtureDenoiser(flow=flow)
    x = start_noise(flow, batch=4)
    sigmas = flow_sigmas(6) if flow else karras_sigmas(6)
    run = lambda seed: sample_lml_euler_ancestral(  # noqa: E731
        model, x, sigmas, extra_args={"seed": seed}, disable=True, flow=flow)
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()
    eta0 = sample_lml_euler_ancestral(model, x, sigmas, eta=0.0, disable=True, flow=flow)
    same_settings = SOLVER_DEFAULTS["lml_euler_ancestral"]  # eta 0 is lml_euler with these
    assert torch.allclose(eta0, sample_lml_euler(model, x, sigmas, disable=True, flow=flow,
                                                 **same_settings), atol=1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("shape", [(2, 1, 12), (1, 4, 3, 4, 4), (2, 16)])
def test_any_latent_rank_and_callback_once_per_step(name, shape):
    dim = math.prod(shape[1:])
    model = MixtureDenoiser(dim=dim)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 80
    sigmas = karras_sigmas(5)
    seen = []
    out = SAMPLERS[name](model, x, sigmas, callback=seen.append, disable=True, end_percent=1.0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert [s["i"] for s in seen] == list(range(5))
    assert all({"x", "i", "sigma", "sigma_hat", "denoised", "lml_cos"} <= set(s) for s in seen)
    assert seen[0]["lml_cos"] is None  # no history at the first step
    assert seen[2]["lml_cos"].shape == (shape[0],)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_is_preserved_and_math_is_float32_or_better(dtype):
    model = MixtureDenoiser()
    x = start_noise(False, batch=4)
    sigmas = karras_sigmas(6)
    out = sample_lml_euler(model, x.to(dtype), sigmas, disable=True)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = sample_lml_euler(model, x.to(dtype).float(), sigmas, disable=True)
    assert torch.allclose(out.float(), ref.to(dtype).float(), atol=1e-2)


def test_no_host_sync_inside_the_step_loop(monkeypatch):
    model = MixtureDenoiser()
    x = start_noise(False, batch=3).reshape(3, 2, 4)
    sigmas = karras_sigmas(6)
    state = {"in_loop": False}

    def guarded(name):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            if state["in_loop"]:
                raise AssertionError(f"host sync via Tensor.{name} inside the step loop")
            return original(self, *args, **kwargs)
        return method

    def tracked_model(x, sigma, **extra):
        state["in_loop"] = False  # the test model itself may convert freely
        out = model(x, sigma, **extra)
        state["in_loop"] = True
        return out

    def callback(info):
        state["in_loop"] = info["i"] < 5  # the loop ends after the last callback
    for name in ("item", "tolist", "cpu", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, guarded(name))
    for sampler, opts in ((sample_lml_euler, {"rank": 2}), (sample_lml_dpmpp_2m, {}),
                          (sample_lml_euler, {"damping_mode": "adaptive", "rank": 2}),
                          (sample_lml_euler_ancestral, {"extra_args": {"seed": 3}})):
        state["in_loop"] = False
        sampler(tracked_model, x, sigmas, callback=callback, disable=True, **opts)


def test_non_finite_input_and_model_output_raise():
    model = MixtureDenoiser()
    x = start_noise(False, batch=2)
    sigmas = karras_sigmas(4)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="input latent"):
        sample_lml_euler(model, bad, sigmas, disable=True)

    def broken(x, sigma, **extra):
        out = model(x, sigma)
        return out * float("nan") if float(sigma[0]) < 1.0 else out
    with pytest.raises(FloatingPointError, match="step 3 of 4"):
        sample_lml_dpmpp_2m(broken, x, sigmas, disable=True)


@pytest.mark.parametrize("option, value, word", [
    ("rank", -1, "rank"), ("rank", 1.5, "rank"), ("damping", 0.0, "damping"),
    ("damping", -1.0, "damping"), ("damping", float("nan"), "damping"),
    ("damping", float("inf"), "damping"), ("kappa", 1.5, "kappa"), ("omega", -0.1, "omega"),
    ("start_percent", 1.2, "start_percent"), ("damping_mode", "magic", "damping_mode"),
    ("damping", "abc", "damping"),
])
def test_bad_options_name_the_input(option, value, word):
    model = MixtureDenoiser()
    with pytest.raises(ValueError, match=word):
        sample_lml_euler(model, start_noise(False, batch=1), karras_sigmas(3), disable=True,
                         **{option: value})


def test_start_after_end_is_rejected():
    with pytest.raises(ValueError, match="start_percent"):
        sample_lml_euler(MixtureDenoiser(), start_noise(False, batch=1), karras_sigmas(3),
                         start_percent=0.8, end_percent=0.2, disable=True)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_degenerate_schedules(name):
    model = MixtureDenoiser()
    x = start_noise(False, batch=2)
    assert torch.equal(SAMPLERS[name](model, x, karras_sigmas(3)[:1], disable=True), x)
    one_step = SAMPLERS[name](model, x, torch.tensor([80.0, 0.0]), disable=True)
    assert torch.allclose(one_step, model(x, torch.full((2,), 80.0)), atol=1e-5)


def test_rf_fresh_noise_follows_the_flow_models_noise_scale():
    # Newer ComfyUI's sample_euler_ancestral_RF multiplies s_noise by the model's
    # model_sampling.noise_scale (which scales the initial noise too); a host without one: 1.
    class CONST:
        pass

    def flow_model(scale):
        denoiser = MixtureDenoiser(flow=True)

        class Sampling(CONST):
            pass

        sampling = Sampling()
        if scale is not None:
            sampling.noise_scale = scale

        class Wrapper:
            def __call__(self, x, sigma, **kwargs):
                return denoiser(x, sigma, **kwargs)

        wrapper = Wrapper()
        wrapper.inner_model = type("Inner", (), {"inner_model": type(
            "Model", (), {"model_sampling": sampling})()})()
        return wrapper

    x, sigmas = start_noise(True, batch=4), flow_sigmas(6)
    run = lambda model, s_noise: sample_lml_euler_ancestral(
        model, x, sigmas, extra_args={"seed": 3}, s_noise=s_noise, disable=True)
    scaled = run(flow_model(2.0), 1.0)
    assert torch.equal(scaled, run(flow_model(None), 2.0))
    assert not torch.allclose(scaled, run(flow_model(None), 1.0))
    assert torch.equal(run(flow_model(1.0), 1.0), run(flow_model(None), 1.0))
