"""The trained digits checkpoint as ComfyUI loads it (comfy.sd.load_checkpoint_guess_config, what
CheckpointLoaderSimple calls): an SD1.5 eps model whose UNet and VAE compute exactly what the
training script's cut-down networks (harness/tiny_digits.py) compute, from small committed
weights."""

import copy

import pytest
import torch

from harness import comfy_host
from harness.tiny_digits import (
    CONTEXT,
    DIGIT_PROMPT,
    DigitClassifier,
    TinyTAESD,
    TinyUNet,
    digits_8x8,
    ink_to_image,
)


@pytest.fixture(scope="module")
def trained():
    return torch.load(comfy_host.DIGITS_WEIGHTS, map_location="cpu", weights_only=True)


def test_committed_weights_are_small_fp16():
    assert comfy_host.DIGITS_WEIGHTS.stat().st_size < 5_000_000
    state = torch.load(comfy_host.DIGITS_WEIGHTS, map_location="cpu", weights_only=True)
    assert {v.dtype for part in ("unet", "vae") for v in state[part].values()} == {torch.float16}


def test_loaded_as_sd15_eps_with_the_discrete_schedule(digits_sd15):
    import comfy.model_sampling
    import comfy.supported_models

    model, clip, vae = digits_sd15
    assert type(model.model.model_config) is comfy.supported_models.SD15
    sampling = model.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.EPS)
    assert isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete)
    assert len(sampling.sigmas) == 1000
    assert clip is not None and vae is not None and vae.latent_channels == 4


def test_comfy_unet_computes_the_trained_cut_down_unet(digits_sd15, trained):
    model, _, _ = digits_sd15
    unet = model.model.diffusion_model
    tiny = TinyUNet.from_reduced(unet.state_dict(), trained["unet"])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=gen)
    context = torch.randn(3, 77, CONTEXT, generator=gen)
    timesteps = torch.tensor([0.0, 420.0, 999.0])
    with torch.no_grad():
        ours = tiny(x, timesteps, context)
        # A float32 CPU copy: the session's model may be loaded on a GPU in half precision.
        comfys = copy.deepcopy(unet).float().cpu()(x, timesteps, context=context)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(comfys, ours, atol=1e-4, rtol=1e-4)


def test_comfy_vae_is_the_trained_taesd_and_reconstructs_digits(digits_sd15, trained):
    _, _, vae = digits_sd15
    tiny = TinyTAESD.from_reduced(vae.first_stage_model.state_dict(), trained["vae"])
    ink, labels = digits_8x8()
    pictures, labels = ink_to_image(ink[:16]).movedim(1, -1), labels[:16]  # ComfyUI's IMAGE layout
    latent = vae.encode(pictures)
    assert latent.shape == (16, 4, 8, 8)
    scale, shift = trained["vae_scale"].float(), trained["vae_shift"].float()
    with torch.no_grad():
        raw = tiny.encode(pictures.movedim(-1, 1))
        decoded = tiny.decode(raw).clamp(0, 1).movedim(1, -1)
    # float32 (the CPU) to 2e-3; ComfyUI runs the VAE in bfloat16 on a GPU (8-bit mantissa).
    atol = 2e-3 if vae.vae_dtype == torch.float32 else 0.15
    torch.testing.assert_close(latent.cpu().float(), raw / scale + shift, atol=atol, rtol=1e-3)
    comfy_decoded = vae.decode(latent).cpu().float()
    torch.testing.assert_close(comfy_decoded, decoded, atol=atol, rtol=1e-3)
    # a faithful round trip (the random-weight VAE's error is ~0.4; the classifier still reads
    # the digits), and unit-variance model-space latents (SD1.5's 0.18215 scale)
    assert (comfy_decoded - pictures).abs().mean() < 0.05
    assert (torch.from_numpy(DigitClassifier().predict(comfy_decoded)) == labels).sum() >= 14
    assert 0.5 < float((latent * 0.18215).detach().std()) < 2.0


def test_prompts_condition_differently(digits_sd15):
    _, clip, _ = digits_sd15

    def encode(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]

    three, seven, empty = encode(DIGIT_PROMPT.format(3)), encode(DIGIT_PROMPT.format(7)), encode("")
    assert three.shape == (1, 77, CONTEXT)
    assert not torch.allclose(three, seven) and not torch.allclose(three, empty)
