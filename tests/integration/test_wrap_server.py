"""Sampler LML Wrap in a real server: SamplerCustomAdvanced around ComfyUI's own samplers."""

import io

import numpy as np
import pytest
from PIL import Image

from harness.comfy_host import CHECKPOINT_NAME, PromptRejected, output_files


def wrapped_prompt(base, seed, **wrap_inputs):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red house", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "6": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0],
                                                    "negative": ["3", 0], "cfg": 5.0}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": base}},
        "8": {"class_type": "SamplerLMLWrap", "inputs": {
            "sampler": ["7", 0], "rank": 1, "damping": 1.0, "fade": 0.0, "kappa": 0.5,
            "damping_mode": "relative", "omega": 0.75, "start_percent": 0.0,
            "end_percent": 1.0, **wrap_inputs}},
        "9": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras",
                                                         "steps": 4, "denoise": 1.0}},
        "10": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["5", 0], "guider": ["6", 0], "sampler": ["8", 0], "sigmas": ["9", 0],
            "latent_image": ["4", 0]}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0],
                                                     "filename_prefix": "lml_test/wrap"}},
    }


def pixels(server, entry):
    (image,) = output_files(entry, "images")
    return np.asarray(Image.open(io.BytesIO(server.view(image))).convert("RGB"))


@pytest.mark.parametrize("base", ["euler", "ipndm_v", "dpmpp_2m_sde"])
def test_wrap_runs_around_builtin_samplers_and_saves_a_png(base, server, fresh_seed):
    seed = fresh_seed()
    wrapped = pixels(server, server.run(wrapped_prompt(base, seed)))
    off = pixels(server, server.run(wrapped_prompt(base, seed, start_percent=1.0)))
    assert wrapped.shape == (64, 64, 3) and wrapped.std() > 0
    assert not np.array_equal(wrapped, off)  # the correction changed the picture


def test_wrap_rejects_a_bad_setting_by_validation(server, fresh_seed):
    with pytest.raises(PromptRejected) as rejected:
        server.queue(wrapped_prompt("euler", fresh_seed(), start_percent=0.9, end_percent=0.1))
    assert "start_percent" in str(rejected.value.response)
