"""lml_wrap: LML around any sampler function.  Off, it is bitwise the sampler it wraps; around
Euler it is lml_euler; it forwards the model's attributes, keeps samples independent and keeps
no state between calls."""

import pytest
import torch

from lml_core import LMOptions, half_log_snr, lml_wrap, sample_lml_euler
from lml_core.sampling import faded_damping

from exact_model import MixtureDenoiser, karras_sigmas, plain_dpmpp_2m, plain_euler


class ChainModel:
    """A model with ComfyUI's attribute chain (model.inner_model.inner_model.model_sampling)."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.inner_model = self
        self.model_sampling = "EPS"
        self.calls = 0

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        return self.denoiser(x, sigma)


def reads_the_chain(model, x, sigmas, extra_args=None, callback=None, disable=None):
    assert model.inner_model.inner_model.model_sampling == "EPS"
    return plain_euler(model, x, sigmas)


@pytest.fixture
def problem():
    model = MixtureDenoiser(dim=8, seed=0)
    x = torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(1)) * 80
    return model, x, karras_sigmas(8).float()


@pytest.mark.parametrize("base", [plain_euler, plain_dpmpp_2m])
@pytest.mark.parametrize("off", [{"rank": 0}, {"start_percent": 1.0, "end_percent": 1.0}])
def test_wrapper_with_the_correction_off_is_bitwise_the_base(problem, base, off):
    model, x, sigmas = problem
    assert torch.equal(lml_wrap(base, **off)(model, x, sigmas), base(model, x, sigmas))


def test_wrapped_euler_is_lml_euler(problem):
    model, x, sigmas = problem
    settings = dict(rank=1, damping=1.0, kappa=0.5, damping_mode="relative", fade=0.0)
    wrapped = lml_wrap(plain_euler, **settings)(model, x, sigmas)
    direct = sample_lml_euler(model, x, sigmas, disable=True, **settings)
    assert not torch.allclose(wrapped, plain_euler(model, x, sigmas), atol=1e-3)
    assert torch.allclose(wrapped, direct, rtol=1e-4, atol=1e-4 * x.abs().max().item() / 80)


def test_wrapper_forwards_the_models_attributes(problem):
    denoiser, x, sigmas = problem
    model = ChainModel(denoiser)
    out = lml_wrap(reads_the_chain)(model, x, sigmas)
    assert torch.isfinite(out).all() and model.calls == len(sigmas) - 1


def test_wrapper_keeps_samples_independent_and_no_state(problem):
    model, x, sigmas = problem
    wrapped = lml_wrap(plain_dpmpp_2m, rank=2)
    batch = wrapped(model, x, sigmas)
    assert torch.equal(wrapped(model, x, sigmas), batch)  # a second call: same result
    for b in range(x.shape[0]):
        alone = wrapped(model, x[b:b + 1], sigmas)
        assert torch.allclose(alone, batch[b:b + 1], rtol=1e-5, atol=1e-4)


def test_wrapper_takes_one_options_object_and_rejects_bad_input():
    lm = LMOptions(rank=2, damping=3.0, kappa=0.5, damping_mode="relative", omega=0.75,
                   start_percent=0.0, end_percent=1.0)
    assert lml_wrap(plain_euler, lm).lml_options is lm
    assert lml_wrap(plain_euler).lml_options == LMOptions.for_sampler("lml_wrap")
    with pytest.raises(ValueError, match="damping"):
        lml_wrap(plain_euler, damping=-1.0)
    with pytest.raises(ValueError, match="sampler function"):
        lml_wrap("euler")


def test_fade_grows_the_damping_on_short_steps_only():
    lm = LMOptions.for_sampler("lml_euler", damping=2.0, fade=3.0)
    sigmas = [80.0, 10.0, 8.0, 0.0]  # a long step, a short one, the final step to 0
    assert faded_damping(lm, sigmas, 0, False) == 2.0  # h = log 8 > 1
    h = half_log_snr(8.0, False) - half_log_snr(10.0, False)
    assert faded_damping(lm, sigmas, 1, False) == pytest.approx(2.0 * h**-3.0)
    assert faded_damping(lm, sigmas, 2, False) == 2.0  # h = inf: no fade
    assert faded_damping(LMOptions.for_sampler("lml_euler", damping=2.0), sigmas, 1, False) == 2.0
