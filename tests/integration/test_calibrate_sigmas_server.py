"""LML Calibrate Sigmas in a real server: its SIGMAS drive SamplerCustom with KSamplerSelect's
dpmpp_2m; its text in Sigmas LML Calibrated gives the same SIGMAS bit for bit (the same image);
a flow calibration on this eps model and malformed text are refused naming the calibration."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from harness.comfy_host import PromptRejected, output_files, prompt_head

FIT, SIGMAS = "5", "6"
FAST = {"heldout": 0.25, "iterations": 1, "regularization": 0.001, "reference_steps": 4}


def prompt(seed, sigmas_node):
    """Checkpoint -> (LML Calibrate Sigmas | Sigmas LML Calibrated) -> SamplerCustom (dpmpp_2m)
    -> PNG."""
    return {
        **prompt_head(),
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
        "8": {"class_type": "SamplerCustom", "inputs": {
            "model": ["1", 0], "add_noise": True, "noise_seed": seed, "cfg": 5.0,
            "positive": ["2", 0], "negative": ["3", 0], "sampler": ["7", 0],
            "sigmas": [sigmas_node[0], 0], "latent_image": ["4", 0]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0],
                                                     "filename_prefix": "lml_test/sigmas"}},
        sigmas_node[0]: sigmas_node[1],
    }


def fit_node(seed):
    return FIT, {"class_type": "LMLCalibrateSigmas", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
        "seed": seed + 1, "cfg": 5.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "steps": 3, "samples": 4, **FAST}}


def saved_node(text):
    return SIGMAS, {"class_type": "SigmasLMLCalibrated",
                    "inputs": {"model": ["1", 0], "calibration": text}}


def pixels(server, entry):
    (image,) = output_files(entry, "images")
    return np.asarray(Image.open(io.BytesIO(server.view(image))).convert("RGB"))


@pytest.fixture(scope="module")
def fitted(server):
    seed = 7_100_001
    return seed, server.run(prompt(seed, fit_node(seed)))


def test_calibrated_sigmas_drive_samplercustom_and_the_text_gives_them_back(server, fitted):
    seed, entry = fitted
    image = pixels(server, entry)
    assert image.shape == (64, 64, 3) and image.std() > 0
    (text,) = entry["outputs"][FIT]["lml_calibration"]
    assert json.loads(text)["sampler"] == "dpmpp_2m"
    again = server.run(prompt(seed, saved_node(text)))
    assert np.array_equal(pixels(server, again), image)  # the same SIGMAS, bit for bit


def test_a_flow_calibration_on_an_eps_model_is_refused(server, fitted, fresh_seed):
    (text,) = fitted[1]["outputs"][FIT]["lml_calibration"]
    data = json.loads(text)
    data["fitted_on"]["model_kind"] = "flow"
    entry = server.run(prompt(fresh_seed(), saved_node(json.dumps(data))), check=False)
    assert entry["status"]["status_str"] == "error"
    message = json.dumps(entry["status"]["messages"])
    assert "calibration: made for a flow model; this model is eps" in message


def test_malformed_text_is_refused_naming_the_calibration(server, fresh_seed):
    with pytest.raises(PromptRejected) as rejected:
        server.queue(prompt(fresh_seed(), saved_node('{"sigmas": "x"}')))
    details = json.dumps(rejected.value.response["node_errors"][SIGMAS])
    assert "calibration" in details
