"""End-to-end tests against a real ComfyUI server (fixture ``server`` in conftest.py)."""

import asyncio
import io
import json
import math
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from harness import workflows
from harness.comfy_host import CHECKPOINT_NAME, PromptRejected, output_files
from lml_core import Calibration

LML_NAMES = ("lml_euler", "lml_dpmpp_2m", "lml_euler_ancestral")
LML_WIDGETS = ("solver", "rank", "damping", "kappa", "damping_mode", "omega", "start_percent",
               "end_percent", "eta", "s_noise")
STEPS = 3


def smoke(name, seed=None):
    prompt = workflows.smoke(workflows.load_api(name), steps=STEPS)
    if seed is not None:
        for node in prompt.values():
            for key in ("seed", "noise_seed"):
                if key in node["inputs"]:
                    node["inputs"][key] = seed
    return prompt


def node_of(prompt, class_type):
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def png_pixels(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB")))


# --------------------------------------------------------------------------------------------
# /object_info


def test_object_info_lists_the_nodes_and_their_inputs(object_info):
    # Beside the host's own nodes (0.3.75: "sampling/custom_sampling/samplers", "sampling";
    # 0.33: "model/sampling/samplers", "model/sampling").
    for node, beside in (("SamplerLML", "KSamplerSelect"), ("KSamplerLML", "KSampler"),
                         ("LMLCompare", "KSampler")):
        info = object_info[node]
        assert info["category"] == object_info[beside]["category"], node
        assert info["description"]
        assert info["python_module"] == "custom_nodes.comfyui-lml"
        required = info["input"]["required"]
        for widget in LML_WIDGETS:
            assert widget in required, (node, widget)
            assert required[widget][1].get("tooltip"), (node, widget)
        # V3 combo: ["COMBO", {"options": [...]}]
        assert required["solver"][0] == "COMBO"
        assert required["solver"][1]["options"] == ["euler", "dpmpp_2m", "euler_ancestral"]
        # Folded away by frontends that know the flag; solver, rank and damping stay up front.
        advanced = {name for name, spec in required.items() if spec[1].get("advanced")}
        assert advanced == {"kappa", "damping_mode", "omega", "start_percent", "end_percent",
                            "eta", "s_noise"}, node
        assert required["rank"][1]["min"] == 1
        assert required["damping"][1]["min"] == required["damping"][1]["default"] == -1.0
        fade = info["input"]["optional"]["fade"]  # appended: saved positions stay valid
        assert fade[1]["default"] == -1.0 and fade[1]["advanced"] and fade[1]["tooltip"]
        assert info["input_order"]["optional"] == ["fade"]
        assert (required["kappa"][1]["min"], required["kappa"][1]["max"]) == (0.0, 1.0)
    assert object_info["SamplerLML"]["output"] == ["SAMPLER"]
    assert object_info["KSamplerLML"]["output"] == ["LATENT"]
    for socket in ("model", "seed", "steps", "cfg", "scheduler", "positive", "negative",
                   "latent_image", "denoise"):
        assert socket in object_info["KSamplerLML"]["input"]["required"]


def test_object_info_serves_each_node_once_with_its_schema_display_name(object_info):
    # Registered through comfy_entrypoint: the display names come from the schemas alone.
    served = {node: object_info[node]["display_name"] for node in object_info
              if object_info[node]["python_module"] == "custom_nodes.comfyui-lml"}
    assert served == {"SamplerLML": "Sampler LML (Levenberg-Marquardt-Langevin)",
                      "KSamplerLML": "KSampler (LML)",
                      "LMLCompare": "LML Compare (baseline vs LML)",
                      "SamplerLMLWrap": "Sampler LML Wrap",
                      "LMLSamplerLab": "LML Sampler Lab",
                      "LMLCalibrate": "LML Calibrate",
                      "SamplerLMLCalibrated": "Sampler LML Calibrated",
                      "LMLCalibrateSigmas": "LML Calibrate Sigmas",
                      "SigmasLMLCalibrated": "Sigmas LML Calibrated"}


def test_dropdown_samplers_appended_once_after_the_builtin_ones(object_info):
    for node, key in (("KSampler", "sampler_name"), ("KSamplerAdvanced", "sampler_name"),
                      ("KSamplerSelect", "sampler_name")):
        spec = object_info[node]["input"]["required"][key]
        names = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
        for name in LML_NAMES:
            assert names.count(name) == 1, (node, name)
        # appended: every built-in name comes before ours, in ComfyUI's own order
        assert names[:3] == ["euler", "euler_cfg_pp", "euler_ancestral"]
        assert max(names.index(n) for n in ("euler", "dpmpp_2m", "uni_pc_bh2")
                   if n in names) < min(names.index(n) for n in LML_NAMES)


# --------------------------------------------------------------------------------------------
# The example workflows


@pytest.mark.parametrize("name", workflows.example_names())
def test_ui_workflow_converts_to_its_api_copy(name, object_info):
    ui = json.loads((workflows.EXAMPLES_DIR / f"{name}.json").read_text())
    assert ui["version"] == 0.4 and ui["nodes"] and ui["links"]
    assert workflows.ui_to_api(ui, object_info) == workflows.load_api(name)


def test_examples_cover_the_issue_list():
    classes = {name: {n["class_type"] for n in workflows.load_api(name).values()}
               for name in workflows.example_names()}
    assert any("KSamplerLML" in c and "EmptyLatentImage" in c for c in classes.values())
    assert any({"SamplerCustomAdvanced", "SamplerLML"} <= c for c in classes.values())
    assert any(n["class_type"] == "KSampler" and n["inputs"]["sampler_name"] == "lml_dpmpp_2m"
               for name in classes for n in workflows.load_api(name).values())
    assert any(n["class_type"] == "KSamplerLML" and n["inputs"]["denoise"] == 0.6
               and "LoadImage" in classes[name]
               for name in classes for n in workflows.load_api(name).values())
    # LML Calibrate -> SamplerCustomAdvanced, and a saved calibration -> Sampler LML Calibrated
    assert {"LMLCalibrate", "SamplerCustomAdvanced"} <= classes["lml_calibrate"]
    (saved,) = [n["inputs"]["calibration"] for n in workflows.load_api(
        "lml_calibrated_sampler").values() if n["class_type"] == "SamplerLMLCalibrated"]
    calibration = Calibration.from_json(saved)
    assert calibration.steps == workflows.CALIBRATED_STEPS


# Example workflows saved before their nodes' inputs changed: example_workflows/ at git 6b6d89b
# (before the V3 port), lml_calibrate at 04cb3d6 (LML Calibrate's `damping`, since renamed
# `regularization`: same place, same meaning), and lml_sampler_lab at f55cc40 (before the Lab's
# `schedulers`: it loads with `schedulers` empty, the node's `scheduler` alone, as before).
PRE_PORT = Path(__file__).parent / "pre_port_workflows"
# Widget values the examples changed after those were saved (lml_calibrate took LML Calibrate's
# new default trajectory 0.3): an old workflow keeps the value it saved.
SINCE_SAVED = {("lml_calibrate", "LMLCalibrate"): {"trajectory": 1.0}}


@pytest.mark.parametrize("name", sorted(p.stem for p in PRE_PORT.glob("*.json")))
def test_workflow_saved_before_the_v3_port_loads_and_runs(name, server, object_info,
                                                          fresh_seed):
    """A UI workflow saved from older nodes: its positional widget values map onto today's
    inputs exactly as before (the frontend maps them the same way), and it runs."""
    ui = json.loads((PRE_PORT / f"{name}.json").read_text())
    prompt = workflows.ui_to_api(ui, object_info)
    expected = workflows.load_api(name)
    for node in expected.values():  # the values the example changed since: saved ones stay
        node["inputs"].update(SINCE_SAVED.get((name, node["class_type"]), {}))
    assert prompt == expected
    prompt = workflows.smoke(prompt, steps=STEPS)
    for node in prompt.values():
        for key in ("seed", "noise_seed"):
            if key in node["inputs"]:
                node["inputs"][key] = fresh_seed()
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success"
    lab = any(node["class_type"] == "LMLSamplerLab" for node in prompt.values())
    assert len(output_files(entry, "images")) == (2 if lab else 1)  # the Lab: plot and grid


@pytest.mark.parametrize("name", workflows.example_names())
def test_example_workflow_runs_and_saves_a_png(name, server, fresh_seed):
    prompt = smoke(name, seed=fresh_seed())
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success"
    images = output_files(entry, "images")
    classes = {node["class_type"] for node in prompt.values()}
    assert len(images) == (2 if "LMLSamplerLab" in classes else 1)  # the Lab: plot and grid
    pixels = Image.open(io.BytesIO(server.view(images[0])))
    assert pixels.format == "PNG"
    if not classes & {"LMLCompare", "LMLSamplerLab"}:
        assert pixels.size == (64, 64)
    for node_id, node in prompt.items():
        if node["class_type"] == "KSamplerLML":
            (diagnostics,) = entry["outputs"][node_id]["lml_diagnostics"]
            assert diagnostics["solver"] == node["inputs"]["solver"]
            assert len(diagnostics["sigmas"]) == len(diagnostics["strength"]) == STEPS
            assert all(math.isfinite(v) for v in diagnostics["sigmas"] + diagnostics["strength"])
            assert diagnostics["sigmas"] == sorted(diagnostics["sigmas"], reverse=True)
            assert diagnostics["strength"][0] == 0.0  # no history at the first step
            assert any(v > 0 for v in diagnostics["strength"])


@pytest.mark.parametrize("solver", ["euler", "euler_ancestral"])
def test_same_seed_same_png_different_seed_different_png(solver, server, fresh_seed):
    prompt = smoke("lml_txt2img_ksampler_lml")
    sampler = node_of(prompt, "KSamplerLML")
    prompt[sampler]["inputs"]["solver"] = solver
    seed_a, seed_b = fresh_seed(), fresh_seed()

    def png(seed):
        prompt[sampler]["inputs"]["seed"] = seed
        return server.view(output_files(server.run(prompt), "images")[0])

    # A, B, A: the second A cannot come from the cache, which then holds B.
    first, other, again = png(seed_a), png(seed_b), png(seed_a)
    assert first == again
    assert not torch.equal(png_pixels(first), png_pixels(other))


# --------------------------------------------------------------------------------------------
# img2img with an inpainting mask: the unmasked region of the input latent is kept


def _inpaint_prompt(sampler_class, sampler_name, seed):
    prompt = smoke("lml_img2img", seed=seed)
    sampler = node_of(prompt, "KSamplerLML")
    encode = node_of(prompt, "VAEEncode")
    prompt.update({
        "20": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}},
        "21": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}},
        "22": {"class_type": "MaskComposite", "inputs": {
            "destination": ["20", 0], "source": ["21", 0], "x": 0, "y": 0, "operation": "add"}},
        "23": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": [encode, 0],
                                                              "mask": ["22", 0]}},
        "24": {"class_type": "SaveLatent", "inputs": {"samples": [encode, 0],
                                                      "filename_prefix": "lml_test/input"}},
        "25": {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0],
                                                      "filename_prefix": "lml_test/output"}},
    })
    inputs = prompt[sampler]["inputs"]
    inputs["latent_image"] = ["23", 0]
    assert inputs["denoise"] == 0.6
    if sampler_class == "KSamplerLML":
        inputs["solver"] = sampler_name
    else:
        prompt[sampler] = {"class_type": "KSampler", "inputs": {
            key: inputs[key] for key in ("model", "seed", "steps", "cfg", "scheduler",
                                         "positive", "negative", "latent_image", "denoise")}}
        prompt[sampler]["inputs"]["sampler_name"] = sampler_name
    return prompt


@pytest.mark.parametrize("sampler_class, sampler_name", [
    ("KSamplerLML", "euler"), ("KSamplerLML", "dpmpp_2m"), ("KSampler", "lml_euler_ancestral"),
    ("KSampler", "euler"),  # the built-in sampler, for reference: the same guarantee
])
def test_img2img_with_mask_keeps_the_unmasked_latent(sampler_class, sampler_name, server,
                                                     fresh_seed):
    entry = server.run(_inpaint_prompt(sampler_class, sampler_name, fresh_seed()))
    saved = {}
    for node_id in ("24", "25"):
        (file_info,) = entry["outputs"][node_id]["latents"]
        saved[node_id] = safetensors.torch.load(server.view(file_info))["latent_tensor"]
    before, after = saved["24"], saved["25"]
    assert before.shape == after.shape == (1, 4, 8, 8)
    assert torch.isfinite(after).all()
    # mask = 1 on the left 32 pixels = latent columns 0-3; columns 4-7 are kept.  The only
    # change allowed there is the float rounding of ComfyUI's latent scaling in and out.
    kept = (after[..., 4:] - before[..., 4:]).abs().max().item()
    assert kept <= 1e-5 * before.abs().max().item(), kept
    assert (after[..., :4] - before[..., :4]).abs().max().item() > 0.05


# --------------------------------------------------------------------------------------------
# Bad input: ComfyUI's validation rejects it, naming the input, and nothing runs


BAD_INPUTS = [
    ("KSamplerLML", {"rank": 0}, "rank"),
    ("KSamplerLML", {"rank": -1}, "rank"),
    ("KSamplerLML", {"damping": -0.5}, "damping"),
    ("KSamplerLML", {"damping": 0.0}, "damping"),
    ("KSamplerLML", {"start_percent": 0.8, "end_percent": 0.2}, "start_percent"),
    ("KSamplerLML", {"damping": "strong"}, "damping"),
    ("KSamplerLML", {"kappa": 1.5}, "kappa"),
    ("KSamplerLML", {"end_percent": 1.5}, "end_percent"),
    ("SamplerLML", {"rank": -1}, "rank"),
    ("SamplerLML", {"damping": -2.0}, "damping"),  # -1 is auto; below is out of bounds
    ("SamplerLML", {"start_percent": 0.9, "end_percent": 0.1}, "start_percent"),
    ("SamplerLML", {"rank": "two"}, "rank"),
]


@pytest.mark.parametrize("node_class, change, input_name", BAD_INPUTS)
def test_bad_input_is_rejected_by_validation(node_class, change, input_name, server,
                                             fresh_seed):
    name = ("lml_txt2img_ksampler_lml" if node_class == "KSamplerLML"
            else "lml_sampler_custom_advanced")
    prompt = smoke(name, seed=fresh_seed())
    node_id = node_of(prompt, node_class)
    prompt[node_id]["inputs"].update(change)
    history_before = len(server.get_json("/history"))

    with pytest.raises(PromptRejected) as rejected:
        server.queue(prompt)

    answer = rejected.value.response
    assert answer["error"]["type"] == "prompt_outputs_failed_validation"
    errors = answer["node_errors"][node_id]["errors"]
    named = [e for e in errors if e["extra_info"].get("input_name") == input_name]
    assert named, errors
    assert input_name in named[0]["details"]
    if "start_percent" in change:
        assert "greater than end_percent" in named[0]["details"]
    queue = server.get_json("/queue")
    assert queue["queue_running"] == [] and queue["queue_pending"] == []
    assert len(server.get_json("/history")) == history_before


# --------------------------------------------------------------------------------------------
# An error inside sampling: execution_error for that prompt, the next one runs


@pytest.mark.parametrize("sampler_class", ["KSamplerLML", "KSampler"])
def test_error_inside_sampling_is_an_execution_error_and_the_server_goes_on(
        sampler_class, server, fresh_seed):
    prompt = smoke("lml_txt2img_ksampler_lml", seed=fresh_seed())
    sampler = node_of(prompt, "KSamplerLML")
    if sampler_class == "KSampler":
        inputs = prompt[sampler]["inputs"]
        prompt[sampler] = {"class_type": "KSampler", "inputs": {
            key: inputs[key] for key in ("model", "seed", "steps", "cfg", "scheduler",
                                         "positive", "negative", "latent_image", "denoise")}}
        prompt[sampler]["inputs"]["sampler_name"] = "lml_euler"
    # A NaN latent passes the widget bounds (NaN compares false) and reaches the sampler,
    # which refuses it.  (JSON has no NaN; ComfyUI's parser accepts the NaN token.)
    empty = prompt[sampler]["inputs"]["latent_image"][0]
    prompt["30"] = {"class_type": "LatentMultiply",
                    "inputs": {"samples": [empty, 0], "multiplier": float("nan")}}
    prompt[sampler]["inputs"]["latent_image"] = ["30", 0]

    entry = server.run(prompt, check=False)
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert len(errors) == 1
    assert errors[0]["node_type"] == sampler_class
    assert "NaN" in errors[0]["exception_message"]
    assert not output_files(entry, "images")

    follow_up = smoke("lml_txt2img_ksampler_lml", seed=fresh_seed())
    assert server.run(follow_up)["status"]["status_str"] == "success"


def test_checkpoint_is_the_test_checkpoint(object_info):
    names = object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert CHECKPOINT_NAME in names


# --------------------------------------------------------------------------------------------
# Progress and previews, as the browser sees them over the websocket


def test_ksampler_lml_reports_progress_previews_and_diagnostics(server, fresh_seed):
    prompt = smoke("lml_txt2img_ksampler_lml", seed=fresh_seed())
    sampler = node_of(prompt, "KSamplerLML")

    async def listen():
        url = server.url.replace("http", "ws") + f"/ws?clientId={server.client_id}"
        messages, previews = [], 0
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            prompt_id = await asyncio.to_thread(server.queue, prompt)
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    previews += 1
                    continue
                data = json.loads(message.data)
                messages.append(data)
                if data["type"] in ("execution_success", "execution_error") and \
                        data["data"].get("prompt_id") == prompt_id:
                    break
        return messages, previews

    messages, previews = asyncio.run(asyncio.wait_for(listen(), timeout=120))
    assert messages[-1]["type"] == "execution_success"
    progress = [m["data"] for m in messages
                if m["type"] == "progress" and m["data"]["node"] == sampler]
    assert [p["value"] for p in progress] == list(range(1, STEPS + 1))
    assert {p["max"] for p in progress} == {STEPS}
    assert previews >= STEPS  # latent2rgb previews (server started with --preview-method)
    executed = [m["data"] for m in messages
                if m["type"] == "executed" and m["data"]["node"] == sampler]
    (diagnostics,) = executed[0]["output"]["lml_diagnostics"]
    assert len(diagnostics["strength"]) == STEPS
