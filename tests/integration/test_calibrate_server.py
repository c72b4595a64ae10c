"""LML Calibrate in a real server: Calibrate -> SamplerCustom makes an image, the calibration
text in Sampler LML Calibrated reproduces it in a new prompt, a schedule it was not fitted for
(another step count or scheduler) is refused, broken and hostile text are validation errors,
and Cancel mid-calibration leaves the server serving."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hostile_calibrations import HOSTILE
from PIL import Image

from harness import workflows
from harness.comfy_host import CHECKPOINT_NAME, PromptRejected, listen, output_files

CALIBRATE, SAMPLER = "5", "6"
FORMAT_1 = Path(__file__).parents[1] / "lml_core" / "calibration_format_1.json"
FAST = {"base": "auto", "history": 1, "move_timesteps": True, "heldout": 0.25,
        "iterations": 1, "regularization": 0.001, "trajectory": 1.0, "reference_steps": 4,
        "field": "this scheduler"}  # the LML fit alone: the field has its own test


def prompt(seed, sampler, steps=3, **calibrate_inputs):
    """Checkpoint -> (LML Calibrate | Sampler LML Calibrated) -> SamplerCustom -> PNG."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red house", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras",
                                                         "steps": steps, "denoise": 1.0}},
        "8": {"class_type": "SamplerCustom", "inputs": {
            "model": ["1", 0], "add_noise": True, "noise_seed": seed, "cfg": 5.0,
            "positive": ["2", 0], "negative": ["3", 0], "sampler": [sampler, 0],
            "sigmas": ["7", 0], "latent_image": ["4", 0]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0],
                                                     "filename_prefix": "lml_test/calibrated"}},
    }
    if sampler == CALIBRATE:  # steps an int, as API prompts saved before it took a list
        graph[CALIBRATE] = {"class_type": "LMLCalibrate", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
            "latent_image": ["4", 0], "seed": seed + 1, "cfg": 5.0, "scheduler": "karras",
            "steps": 3, "samples": 4, **FAST, **calibrate_inputs}}
    return graph


def saved(server, calibration, seed, steps=3):
    graph = prompt(seed, SAMPLER, steps)
    graph[SAMPLER] = {"class_type": "SamplerLMLCalibrated", "inputs": {"calibration": calibration}}
    return graph


def pixels(server, entry):
    (image,) = output_files(entry, "images")
    return np.asarray(Image.open(io.BytesIO(server.view(image))).convert("RGB"))


@pytest.fixture(scope="module")
def calibrated(server):
    """(seed, history entry) of one Calibrate -> SamplerCustom prompt (a seed of its own:
    fresh_seed is per test)."""
    seed = 7_000_001
    return seed, server.run(prompt(seed, CALIBRATE))


def test_calibrate_feeds_samplercustom_and_its_text_reproduces_the_image(server, calibrated):
    seed, entry = calibrated
    image = pixels(server, entry)
    assert image.shape == (64, 64, 3) and image.std() > 0
    (text,) = entry["outputs"][CALIBRATE]["lml_calibration"]
    assert json.loads(text)["fitted_on"]["steps"] == 3
    (report,) = entry["outputs"][CALIBRATE]["text"]
    assert "held-out error" in report and "model calls" in report
    again = server.run(saved(server, text, seed))
    assert np.array_equal(pixels(server, again), image)


def test_one_calibration_of_two_step_counts_samples_at_each_and_refuses_another(server,
                                                                              fresh_seed):
    """LML Calibrate with steps "4,8" (one run) -> SamplerCustom at 4 steps; its text in
    Sampler LML Calibrated samples with BasicScheduler at 4 and at 8 steps (at 4: LML
    Calibrate's own image) and refuses 6, naming 4 and 8."""
    seed = fresh_seed()
    graph = prompt(seed, CALIBRATE, steps=4)
    graph[CALIBRATE]["inputs"]["steps"] = "4,8"
    entry = server.run(graph)
    (text,) = entry["outputs"][CALIBRATE]["lml_calibration"]
    data = json.loads(text)
    assert data["format"] == "lml-calibration-set/1"
    assert [c["fitted_on"]["steps"] for c in data["calibrations"]] == [4, 8]
    (report,) = entry["outputs"][CALIBRATE]["text"]
    assert report.startswith("LML Calibrate: 4 and 8 steps")
    assert "reference: shared with the 4-step fit" in report
    image = pixels(server, entry)
    assert np.array_equal(pixels(server, server.run(saved(server, text, seed, steps=4))), image)
    eight = pixels(server, server.run(saved(server, text, fresh_seed(), steps=8)))
    assert eight.shape == (64, 64, 3) and eight.std() > 0
    refused = server.run(saved(server, text, fresh_seed(), steps=6), check=False)
    assert refused["status"]["status_str"] == "error"
    message = json.dumps(refused["status"]["messages"])
    assert "calibration: fitted for 4 and 8 steps of the karras schedule, got 6 steps" in message


@pytest.mark.parametrize("steps, message", [("4,,8", "steps has an empty entry"),
                                            ("4,4", "steps: 4 is given twice"),
                                            ("101", "steps: '101' is out of range")])
def test_bad_steps_are_a_validation_error(server, fresh_seed, steps, message):
    graph = prompt(fresh_seed(), CALIBRATE)
    graph[CALIBRATE]["inputs"]["steps"] = steps
    with pytest.raises(PromptRejected) as rejected:
        server.queue(graph)
    errors = rejected.value.response["node_errors"][CALIBRATE]["errors"]
    assert any(message in error["details"] for error in errors), errors


def test_another_step_count_is_refused_naming_both(server, calibrated, fresh_seed):
    (text,) = calibrated[1]["outputs"][CALIBRATE]["lml_calibration"]
    entry = server.run(saved(server, text, fresh_seed(), steps=5), check=False)
    assert entry["status"]["status_str"] == "error"
    message = json.dumps(entry["status"]["messages"])
    assert "fitted for 3 steps" in message and "given 5 steps" in message


def test_another_scheduler_with_the_same_steps_and_ends_is_refused(server, calibrated,
                                                                     fresh_seed):
    """Exponential at 3 steps has Karras's step count and end sigmas, not its middle one."""
    (text,) = calibrated[1]["outputs"][CALIBRATE]["lml_calibration"]
    assert json.loads(text)["fitted_on"]["scheduler"] == "karras"
    graph = saved(server, text, fresh_seed())
    graph["7"]["inputs"]["scheduler"] = "exponential"
    entry = server.run(graph, check=False)
    assert entry["status"]["status_str"] == "error"
    message = json.dumps(entry["status"]["messages"])
    assert "fitted for 3 steps of the karras schedule" in message and "differs" in message


def test_hostile_calibration_text_is_refused_at_validation(server, fresh_seed):
    """Every broken or hostile text (tests/lml_core/hostile_calibrations.py: empty, {}, null,
    a list, NaN, 1e300, 100,000 numbers in a row, code as the base, 100,000 nested brackets,
    5 MB of junk, ...) is a 400 naming the calibration input, before anything runs; then a good
    prompt runs."""
    for case, text, message in HOSTILE:
        status, answer = server.post_json("/prompt", {"prompt": saved(server, text, fresh_seed()),
                                                      "client_id": server.client_id})
        assert status == 400, (case, status, answer)
        (error,) = answer["node_errors"][SAMPLER]["errors"]
        assert error["extra_info"]["input_name"] == "calibration", case
        assert error["details"].startswith("calibration - calibration: "), (case, error)
        assert message in error["details"], (case, error["details"])
        assert len(error["details"]) < 500, case
    # The saved example's calibration (format 2) and one saved before format 2 still run.
    for good in (workflows.SAVED_CALIBRATION, FORMAT_1):
        entry = server.run(saved(server, good.read_text(), fresh_seed(),
                                 steps=workflows.CALIBRATED_STEPS))
        assert pixels(server, entry).std() > 0


@pytest.mark.parametrize("change, message", [
    # JSON NaN passes ComfyUI's own bounds check (NaN compares false): the node names it.
    ({"cfg": float("nan")}, "cfg must be a number, got nan"),
    ({"cfg": float("inf")}, "cfg must be between 0 and 100, got inf"),
    ({"scheduler": "nope"}, "scheduler must be one of"),  # a V3 combo 0.3.75 does not check
])
def test_bad_cfg_or_scheduler_is_a_validation_error(server, fresh_seed, change, message):
    with pytest.raises(PromptRejected) as rejected:
        server.queue(prompt(fresh_seed(), CALIBRATE, **change))
    errors = rejected.value.response["node_errors"][CALIBRATE]["errors"]
    assert any(message in error["details"] for error in errors), errors


def test_cancel_mid_calibration_and_the_server_goes_on(server, fresh_seed):
    graph = prompt(fresh_seed(), CALIBRATE, samples=8, iterations=50, reference_steps=200)
    _, messages, entry = listen(server, graph, CALIBRATE,
                                on_first_progress=lambda _: server.post_json("/interrupt", {}))
    assert messages[-1]["type"] == "execution_interrupted"
    assert entry["status"]["status_str"] == "error" and not output_files(entry, "images")
    follow_up = server.run(prompt(fresh_seed(), CALIBRATE))
    assert follow_up["status"]["status_str"] == "success"
