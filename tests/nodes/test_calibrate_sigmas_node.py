"""LML Calibrate Sigmas and Sigmas LML Calibrated in-process: a host sampler's timesteps fitted
through ComfyUI's own sampling path on the test checkpoint, the SIGMAS driving SamplerCustom's
path, the saved text giving the same SIGMAS, and a calibration for another model refused."""

import json

import pytest
import torch

from lml_core import Calibration

FAST = {"heldout": 0.25, "iterations": 1, "regularization": 1e-3, "reference_steps": 4}


def node(pack, name):
    return pack.nodes.NODES_BY_ID[name]


def calibrate_sigmas(pack, sd15, conds, sampler_name="dpmpp_2m", steps=3, seed=4, **changes):
    latent = {"samples": torch.zeros([1, 4, 8, 8])}
    return node(pack, "LMLCalibrateSigmas").execute(
        model=sd15[0], positive=conds[0], negative=conds[1], latent_image=latent, seed=seed,
        cfg=4.0, sampler_name=sampler_name, scheduler="karras", steps=steps, samples=4,
        **{**FAST, **changes})


@pytest.fixture(scope="module")
def fitted(pack, sd15, conds, user_dir):
    return calibrate_sigmas(pack, sd15, conds)


def test_the_sigmas_drive_the_sampler_and_the_text_gives_them_back(pack, sd15, conds, fitted):
    sigmas, text, report = fitted.result
    calibration = Calibration.from_json(text)
    assert calibration.sampler == "dpmpp_2m" and calibration.corrections == []
    assert sigmas.dtype == torch.float32 and sigmas.tolist() == pytest.approx(
        calibration.sigmas, rel=1e-6)
    assert sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all())
    assert "held-out error" in report and "model calls" in report
    again = node(pack, "SigmasLMLCalibrated").execute(model=sd15[0], calibration=text).result[0]
    assert torch.equal(again, sigmas)
    # SamplerCustom's path: KSamplerSelect's dpmpp_2m on these sigmas.
    import comfy.sample

    latent = torch.zeros([1, 4, 8, 8])
    noise = comfy.sample.prepare_noise(latent, 3)
    import comfy.samplers

    out = comfy.sample.sample_custom(sd15[0], noise, 4.0, comfy.samplers.sampler_object(
        "dpmpp_2m"), again, *conds, latent, disable_pbar=True, seed=3)
    assert torch.isfinite(out).all()


def test_batch_size_sets_the_noises_per_model_call(pack, sd15, conds, fitted, user_folder,
                                                   counting):
    """The module's fit again at batch_size 1: every run of the sampler (its starts, Jacobian
    columns and scores) and of the reference takes one noise per model call (cond and uncond:
    2 latents), the same evaluations in all, and the same sigmas to float32 rounding (the
    UNet's output for a noise changes by ~3e-6 relative with the batch it is in; the fit's
    finite differences make that ~1e-4)."""
    _, whole, _ = fitted.result
    user_folder("one_by_one")
    model, seen = counting(sd15[0])
    sigmas, text, report = calibrate_sigmas(pack, (model, *sd15[1:]), conds,
                                            batch_size=1).result
    fit = json.loads(text)["report"]
    assert set(seen) == {2} and len(seen) == fit["model_evaluations"]
    assert fit["model_evaluations"] == json.loads(whole)["report"]["model_evaluations"]
    assert fit["batch"] == {"size": 1, "why": "set by batch_size"}
    assert "batch: 1 noise per model call (set by batch_size)" in report
    assert json.loads(whole)["report"]["calibrated"]  # fitted sigmas, not the schedule's
    assert sigmas.tolist() == pytest.approx(json.loads(whole)["sigmas"], rel=1e-3)


def test_a_stochastic_sampler_is_fitted_without_its_noise(pack, sd15, conds, user_dir):
    sigmas, text, _ = calibrate_sigmas(pack, sd15, conds, sampler_name="euler_ancestral",
                                       iterations=0).result
    assert Calibration.from_json(text).sampler == "euler_ancestral"
    assert len(sigmas) == 4


def test_a_calibration_for_another_model_is_refused(pack, sd15, fitted):
    text = json.loads(fitted.result[1])
    flow = json.dumps({**text, "fitted_on": {**text["fitted_on"], "model_kind": "flow"}})
    with pytest.raises(ValueError, match="^calibration: made for a flow model; this model is eps"):
        node(pack, "SigmasLMLCalibrated").execute(model=sd15[0], calibration=flow)
    scaled = [s * 0.5 for s in text["sigmas"]]
    other = json.dumps({**text, "sigmas": scaled,
                        "fitted_on": {**text["fitted_on"], "sigma_max": scaled[0],
                                      "sigma_min": scaled[-2], "sigmas": scaled}})
    with pytest.raises(ValueError, match="^calibration: made for sigmas 7.3"):
        node(pack, "SigmasLMLCalibrated").execute(model=sd15[0], calibration=other)
    assert "calibration" in node(pack, "SigmasLMLCalibrated").validate_inputs(calibration="{}")
