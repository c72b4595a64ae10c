"""The example workflows: their definitions, the UI-format <-> API-format conversion, and the
"smoke" variant the tests and the example runner submit to the random-weight test host, and
the "digits" variant (``digits_prompt``) the example runner and the saved calibration use on
the trained tiny digits checkpoint.

    python -m harness.workflows     # (re)write example_workflows/*.json, api/*.json, the input
                                    # PNG and the thumbnails (needs the host: a server runs)

Each example is written twice from one definition: ``example_workflows/<name>.json`` in the UI
format that ComfyUI's "Save" writes (drag it onto the canvas) and ``example_workflows/api/
<name>.json`` in the API format that POST /prompt takes.  Widget order and output slots come
from a running server's /object_info, so the UI files match what the frontend expects.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from lml_core import ANCESTRAL_DEFAULTS, SOLVER_DEFAULTS, WRAP_DEFAULTS, omega_widget

from .comfy_host import CHECKPOINT_NAME, ROOT
from .tiny_digits import digit_prompt

EXAMPLES_DIR = ROOT / "example_workflows"
API_DIR = EXAMPLES_DIR / "api"
INPUT_IMAGE = EXAMPLES_DIR / "input" / "lml_example_input.png"
# The saved calibration the lml_calibrated_sampler example carries: LML Calibrate's output for
# lml_calibrate's settings, made by ``python -m harness.workflows --calibrate``.
SAVED_CALIBRATION = EXAMPLES_DIR / "input" / "lml_calibration.json"
CALIBRATED_STEPS = 8

# What a user most likely has; the smoke variant swaps in the test checkpoint.
USER_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
POSITIVE = ("a cozy wooden cabin in a snowy pine forest at dusk, warm light in the windows, "
            "highly detailed photograph")
NEGATIVE = "blurry, low quality, watermark, text"
SIZE = 512
STEPS = 20
SEED = 42


AUTO = -1.0  # the LM nodes' widget value for "the solver's measured setting"


def _lm_widgets(defaults, fade_after):
    """Every LM widget (LMOptions' fields) with the values of a defaults table when the files
    are written (omega as the widget shows it), fade after the widget ``fade_after``.  The
    UI files take the widget order from /object_info (nodes/lm_settings.py's declaration);
    this order only keeps the API files' key order stable."""
    values = {name: value for name, value in defaults.items() if name != "fade"}
    values["omega"] = omega_widget(defaults["omega"])
    at = list(values).index(fade_after) + 1
    items = list(values.items())
    return dict(items[:at] + [("fade", defaults["fade"])] + items[at:])


def _lml_widgets(solver):
    """Sampler LML's widgets with lml_core's defaults for ``solver``; fade (the last widget)
    as a new node has it: auto, which is also what a workflow saved before fade existed
    loads with."""
    widgets = {"solver": solver, **_lm_widgets(SOLVER_DEFAULTS[f"lml_{solver}"], "end_percent"),
               **ANCESTRAL_DEFAULTS}
    return {**{k: v for k, v in widgets.items() if k != "fade"}, "fade": AUTO}


def _wrap_widgets():
    """Sampler LML Wrap's widgets with lml_core's WRAP_DEFAULTS (fade after damping)."""
    return _lm_widgets(WRAP_DEFAULTS, "damping")


def _calibrate_widgets():
    """LML Calibrate's settings: lml_core's defaults, 32 noises, the whole field, auto
    batch_size (noises per model call from ComfyUI's model management) and the default
    jacobian_rows and linear_fits."""
    from lml_core import CALIBRATE_DEFAULTS

    options = {k: v for k, v in CALIBRATE_DEFAULTS.items()
               if k in ("base", "history", "move_timesteps", "heldout", "iterations",
                        "regularization", "trajectory", "reference_steps")}
    return {"samples": 32, **options, "field": "all pairs", "batch_size": 0,
            "jacobian_rows": CALIBRATE_DEFAULTS["jacobian_rows"],
            "linear_fits": CALIBRATE_DEFAULTS["linear_fits"]}


def _saved_calibration() -> str:
    return SAVED_CALIBRATION.read_text() if SAVED_CALIBRATION.exists() else ""


def _calibrated_sampling(prefix):
    """SamplerCustomAdvanced with the SAMPLER of node 5 on the calibrated schedule (karras,
    CALIBRATED_STEPS), the latent of node 4, decoded and saved under ``prefix``."""
    return {
        6: ("RandomNoise", {"noise_seed": SEED}, (880, 40)),
        7: ("CFGGuider", {"model": [1, 0], "positive": [2, 0], "negative": [3, 0], "cfg": 7.0},
            (880, 180)),
        8: ("BasicScheduler", {"model": [1, 0], "scheduler": "karras",
                               "steps": CALIBRATED_STEPS, "denoise": 1.0}, (880, 820)),
        9: ("SamplerCustomAdvanced", {"noise": [6, 0], "guider": [7, 0], "sampler": [5, 0],
                                      "sigmas": [8, 0], "latent_image": [4, 0]}, (1260, 120)),
        10: ("VAEDecode", {"samples": [9, 0], "vae": [1, 2]}, (1600, 120)),
        11: ("SaveImage", {"images": [10, 0], "filename_prefix": prefix}, (1820, 120)),
    }


def _text_nodes():
    return {
        1: ("CheckpointLoaderSimple", {"ckpt_name": USER_CHECKPOINT}, (40, 120)),
        2: ("CLIPTextEncode", {"text": POSITIVE, "clip": [1, 1]}, (420, 40), "Positive prompt"),
        3: ("CLIPTextEncode", {"text": NEGATIVE, "clip": [1, 1]}, (420, 300), "Negative prompt"),
    }


def definitions() -> dict:
    """name -> {node id: (class_type, inputs, position[, title])}; links are [node id, slot]."""
    return {
        "lml_txt2img_ksampler_lml": {
            **_text_nodes(),
            4: ("EmptyLatentImage", {"width": SIZE, "height": SIZE, "batch_size": 1}, (420, 560)),
            5: ("KSamplerLML", {"model": [1, 0], "seed": SEED, "steps": STEPS, "cfg": 7.0,
                                "scheduler": "karras", "positive": [2, 0], "negative": [3, 0],
                                "latent_image": [4, 0], "denoise": 1.0,
                                **_lml_widgets("euler")}, (880, 120)),
            6: ("VAEDecode", {"samples": [5, 0], "vae": [1, 2]}, (1260, 120)),
            7: ("SaveImage", {"images": [6, 0], "filename_prefix": "lml/txt2img"}, (1480, 120)),
        },
        "lml_sampler_custom_advanced": {
            **_text_nodes(),
            4: ("EmptyLatentImage", {"width": SIZE, "height": SIZE, "batch_size": 1}, (420, 560)),
            5: ("RandomNoise", {"noise_seed": SEED}, (880, 40)),
            6: ("CFGGuider", {"model": [1, 0], "positive": [2, 0], "negative": [3, 0],
                              "cfg": 7.0}, (880, 180)),
            7: ("SamplerLML", _lml_widgets("dpmpp_2m"), (880, 340)),
            8: ("BasicScheduler", {"model": [1, 0], "scheduler": "karras", "steps": STEPS,
                                   "denoise": 1.0}, (880, 720)),
            9: ("SamplerCustomAdvanced", {"noise": [5, 0], "guider": [6, 0], "sampler": [7, 0],
                                          "sigmas": [8, 0], "latent_image": [4, 0]}, (1260, 120)),
            10: ("VAEDecode", {"samples": [9, 0], "vae": [1, 2]}, (1600, 120)),
            11: ("SaveImage", {"images": [10, 0], "filename_prefix": "lml/custom_advanced"},
                 (1820, 120)),
        },
        "lml_wrap_builtin_sampler": {
            **_text_nodes(),
            4: ("EmptyLatentImage", {"width": SIZE, "height": SIZE, "batch_size": 1}, (420, 560)),
            5: ("RandomNoise", {"noise_seed": SEED}, (880, 40)),
            6: ("CFGGuider", {"model": [1, 0], "positive": [2, 0], "negative": [3, 0],
                              "cfg": 7.0}, (880, 180)),
            7: ("KSamplerSelect", {"sampler_name": "ipndm_v"}, (880, 340)),
            8: ("SamplerLMLWrap", {"sampler": [7, 0], **_wrap_widgets()}, (880, 460)),
            9: ("BasicScheduler", {"model": [1, 0], "scheduler": "karras", "steps": STEPS,
                                   "denoise": 1.0}, (880, 820)),
            10: ("SamplerCustomAdvanced", {"noise": [5, 0], "guider": [6, 0], "sampler": [8, 0],
                                           "sigmas": [9, 0], "latent_image": [4, 0]},
                 (1260, 120)),
            11: ("VAEDecode", {"samples": [10, 0], "vae": [1, 2]}, (1600, 120)),
            12: ("SaveImage", {"images": [11, 0], "filename_prefix": "lml/wrap"}, (1820, 120)),
        },
        "lml_ksampler_builtin_dpmpp_2m": {
            **_text_nodes(),
            4: ("EmptyLatentImage", {"width": SIZE, "height": SIZE, "batch_size": 1}, (420, 560)),
            5: ("KSampler", {"model": [1, 0], "seed": SEED, "steps": STEPS, "cfg": 7.0,
                             "sampler_name": "lml_dpmpp_2m", "scheduler": "karras",
                             "positive": [2, 0], "negative": [3, 0], "latent_image": [4, 0],
                             "denoise": 1.0}, (880, 120)),
            6: ("VAEDecode", {"samples": [5, 0], "vae": [1, 2]}, (1260, 120)),
            7: ("SaveImage", {"images": [6, 0], "filename_prefix": "lml/ksampler_dpmpp_2m"},
                (1480, 120)),
        },
        "lml_img2img": {
            **_text_nodes(),
            4: ("LoadImage", {"image": INPUT_IMAGE.name}, (40, 420)),
            5: ("VAEEncode", {"pixels": [4, 0], "vae": [1, 2]}, (420, 560)),
            6: ("KSamplerLML", {"model": [1, 0], "seed": SEED, "steps": STEPS, "cfg": 7.0,
                                "scheduler": "karras", "positive": [2, 0], "negative": [3, 0],
                                "latent_image": [5, 0], "denoise": 0.6,
                                **_lml_widgets("euler")}, (880, 120)),
            7: ("VAEDecode", {"samples": [6, 0], "vae": [1, 2]}, (1260, 120)),
            8: ("SaveImage", {"images": [7, 0], "filename_prefix": "lml/img2img"}, (1480, 120)),
        },
        "lml_compare": {
            **_text_nodes(),
            4: ("EmptyLatentImage", {"width": SIZE, "height": SIZE, "batch_size": 1}, (420, 560)),
            5: ("LMLCompare", {"model": [1, 0], "seed": SEED, "steps": 10, "cfg": 7.0,
                               "scheduler": "karras", "positive": [2, 0], "negative": [3, 0],
                               "latent_image": [4, 0], "vae": [1, 2], "baseline_sampler": "euler",
                               **_lml_widgets("euler")}, (880, 120)),
            6: ("SaveImage", {"images": [5, 0], "filename_prefix": "lml/compare"}, (1300, 120)),
        },
        "lml_calibrate": {
            **_text_nodes(),
            4: ("EmptyLatentImage", {"width": SIZE, "height": SIZE, "batch_size": 1}, (420, 560)),
            5: ("LMLCalibrate", {"model": [1, 0], "positive": [2, 0], "negative": [3, 0],
                                 "latent_image": [4, 0], "seed": SEED + 1, "cfg": 7.0,
                                 "scheduler": "karras", "steps": CALIBRATED_STEPS,
                                 **_calibrate_widgets()}, (880, 340)),
            **_calibrated_sampling("lml/calibrated"),
        },
        "lml_calibrated_sampler": {
            **_text_nodes(),
            4: ("EmptyLatentImage", {"width": SIZE, "height": SIZE, "batch_size": 1}, (420, 560)),
            5: ("SamplerLMLCalibrated", {"calibration": _saved_calibration()}, (880, 340),
                "Sampler LML Calibrated (paste LML Calibrate's calibration here)"),
            **_calibrated_sampling("lml/calibrated_saved"),
        },
        "lml_sampler_lab": {
            **_text_nodes(),
            4: ("EmptyLatentImage", {"width": SIZE, "height": SIZE, "batch_size": 1}, (420, 560)),
            5: ("LMLSamplerLab", {"model": [1, 0], "positive": [2, 0], "negative": [3, 0],
                                  "latent_image": [4, 0], "vae": [1, 2], "seed": SEED,
                                  "cfg": 7.0, "scheduler": "karras",
                                  "samplers": "euler,lml_euler,dpmpp_2m,ipndm_v,deis,uni_pc",
                                  "steps": "4,6,8,12,20", "reference_sampler": "dpmpp_2m",
                                  "reference_steps": 100, "schedulers": ""}, (880, 120)),
            6: ("SaveImage", {"images": [5, 1], "filename_prefix": "lml/lab_plot"}, (1300, 40),
                "Error vs model calls"),
            7: ("SaveImage", {"images": [5, 2], "filename_prefix": "lml/lab_grid"},
                (1300, 420), "Samples grid"),
        },
    }


# --------------------------------------------------------------------------------------------
# API format


def to_api(graph: dict) -> dict:
    prompt = {}
    for node_id, spec in graph.items():
        class_type, inputs = spec[0], spec[1]
        api_inputs = {k: ([str(v[0]), v[1]] if isinstance(v, list) else v)
                      for k, v in inputs.items()}
        prompt[str(node_id)] = {"class_type": class_type, "inputs": api_inputs,
                                "_meta": {"title": spec[3] if len(spec) > 3 else class_type}}
    return prompt


def smoke(prompt: dict, steps=3, size=64, checkpoint=CHECKPOINT_NAME) -> dict:
    """The prompt as the tests run it: test checkpoint, size x size images, ``steps`` steps
    (the Lab: one step count, and a reference of at most 4 x ``steps``; LML Calibrate: 4
    noises, 2 iterations, its own scheduler only).  A prompt with a saved calibration keeps
    the step count it was fitted for."""
    prompt = copy.deepcopy(prompt)
    if any(node["class_type"] == "SamplerLMLCalibrated" for node in prompt.values()):
        steps = CALIBRATED_STEPS
    for node in prompt.values():
        inputs = node["inputs"]
        if "ckpt_name" in inputs:
            inputs["ckpt_name"] = checkpoint
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = size
        if "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = steps  # the Lab's step list becomes the single count "3"
        if "reference_steps" in inputs:  # the Lab's converged reference, scaled down alike
            inputs["reference_steps"] = min(inputs["reference_steps"], 4 * steps)
        if node["class_type"] == "LMLCalibrate":
            inputs["samples"] = min(inputs["samples"], 4)
            inputs["iterations"] = min(inputs["iterations"], 2)
            inputs["field"] = "this scheduler"  # the field's cost has tests of its own
    return prompt


def load_api(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def example_names() -> list[str]:
    return sorted(p.stem for p in API_DIR.glob("*.json"))


def example_digit(name: str) -> int:
    """The digit an example draws on the digits checkpoint: one per example, in name order."""
    return (example_names().index(name) + 5) % 10


def digits_prompt(prompt: dict, name: str, checkpoint: str, size: int, steps=None,
                  shrink_calibration=True) -> dict:
    """An example's prompt on the digits checkpoint: "a handwritten digit N", an empty negative
    prompt, size x size pictures, the saved steps (or ``steps``, as ``smoke`` sets them)."""
    if steps is not None:
        prompt = smoke(prompt, steps=steps, size=size, checkpoint=checkpoint)
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs, title = node["inputs"], node.get("_meta", {}).get("title", "")
        if "ckpt_name" in inputs:
            inputs["ckpt_name"] = checkpoint
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = size
        if node["class_type"] == "CLIPTextEncode":
            inputs["text"] = "" if title.startswith("Negative") else digit_prompt(
                example_digit(name))
        if node["class_type"] == "LMLCalibrate" and shrink_calibration:
            # A CPU demo: 8 noises and 4 iterations (the workflow's 32 and 20 take ~15 min here).
            inputs["samples"] = min(inputs["samples"], 8)
            inputs["iterations"] = min(inputs["iterations"], 4)
    return prompt


# --------------------------------------------------------------------------------------------
# UI format (LiteGraph serialisation, version 0.4)

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _input_spec(info: dict, name: str):
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            return info["input"][section][name]
    raise KeyError(name)


def _ordered_inputs(info: dict):
    order = info.get("input_order") or {s: list(info["input"].get(s, {}))
                                        for s in ("required", "optional")}
    return [*order.get("required", []), *order.get("optional", [])]


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _extra_widget_values(class_type: str, name: str, spec) -> list:
    """Values the frontend stores after a widget: the seed's "control after generate" mode and
    LoadImage's upload button."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("control_after_generate"):
        return ["fixed"]
    if options.get("image_upload"):
        return ["image"]
    return []


def to_ui(graph: dict, object_info: dict) -> dict:
    order = _topological_order(graph)
    nodes, links = [], []
    outputs = {}  # node id -> list of output dicts
    for node_id, spec in graph.items():
        info = object_info[spec[0]]
        outputs[node_id] = [
            {"name": name, "type": kind, "links": [], "slot_index": slot}
            for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
    for node_id, spec in graph.items():
        class_type, inputs, pos = spec[0], spec[1], spec[2]
        info = object_info[class_type]
        ui_inputs, widgets = [], []
        for name in _ordered_inputs(info):
            input_spec = _input_spec(info, name)
            value = inputs.get(name)
            if isinstance(value, list):  # a link
                link_id = len(links) + 1
                source, slot = value
                kind = outputs[source][slot]["type"]
                links.append([link_id, source, slot, node_id, len(ui_inputs), kind])
                outputs[source][slot]["links"].append(link_id)
                ui_inputs.append({"name": name, "type": kind, "link": link_id})
            elif _is_widget(input_spec):
                if value is None:
                    raise KeyError(f"{class_type}: widget {name} has no value")
                widgets.append(value)
                widgets.extend(_extra_widget_values(class_type, name, input_spec))
        node = {"id": node_id, "type": class_type, "pos": list(pos), "size": [320, 160],
                "flags": {}, "order": order.index(node_id), "mode": 0, "inputs": ui_inputs,
                "outputs": outputs[node_id],
                "properties": {"Node name for S&R": class_type}, "widgets_values": widgets}
        if len(spec) > 3:
            node["title"] = spec[3]
        nodes.append(node)
    return {"last_node_id": max(graph), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def _topological_order(graph: dict) -> list:
    done = []

    def visit(node_id):
        if node_id in done:
            return
        for value in graph[node_id][1].values():
            if isinstance(value, list):
                visit(value[0])
        done.append(node_id)

    for node_id in graph:
        visit(node_id)
    return done


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow to the API format, as the frontend's "queue" does."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        info = object_info[node["type"]]
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name in _ordered_inputs(info):
            spec = _input_spec(info, name)
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
                continue
            if not _is_widget(spec):
                continue
            if not values:  # saved before this widget existed: the frontend keeps its default
                inputs[name] = spec[1]["default"]
                continue
            inputs[name] = values.pop(0)
            for _ in _extra_widget_values(node["type"], name, spec):
                values.pop(0)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def write_input_image(path=INPUT_IMAGE, size=256) -> Path:
    """A small procedural picture (sky, sun, hills) for the img2img example."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size, 3))
    image[...] = np.stack([0.35 + 0.4 * y, 0.55 + 0.3 * y, 0.95 - 0.2 * y], axis=-1)  # sky
    sun = (x - 0.7) ** 2 + (y - 0.3) ** 2 < 0.012
    image[sun] = [1.0, 0.85, 0.4]
    hills = y > 0.62 + 0.08 * np.sin(6.0 * x)
    image[hills] = np.stack([0.2 + 0.2 * y, 0.45 + 0.1 * x, 0.2 + 0 * x], axis=-1)[hills]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.clip(0, 1) * 255).astype("uint8")).save(path, optimize=True)
    return path


def write_saved_calibration(server) -> str:
    """Run lml_calibrate's LML Calibrate on the trained digits checkpoint as the main job does
    (64 px, the prompt it gives the lml_calibrated_sampler example, 8 noises and 4 iterations:
    a CPU demo) and save the calibration as that example's text."""
    from .comfy_host import digits_checkpoint_name, ensure_digits_checkpoint

    ensure_digits_checkpoint()
    prompt = digits_prompt(to_api(definitions()["lml_calibrate"]), "lml_calibrated_sampler",
                           digits_checkpoint_name(), 64)
    calibrate_id = next(k for k, v in prompt.items() if v["class_type"] == "LMLCalibrate")
    entry = server.run(prompt, timeout=3600)
    (text,) = entry["outputs"][calibrate_id]["lml_calibration"]
    SAVED_CALIBRATION.write_text(text)
    return text


def write_examples(object_info):
    for name, graph in definitions().items():
        api = to_api(graph)
        ui = to_ui(graph, object_info)
        assert ui_to_api(ui, object_info) == api, name
        (EXAMPLES_DIR / f"{name}.json").write_text(json.dumps(ui, indent=2) + "\n")
        (API_DIR / f"{name}.json").write_text(json.dumps(api, indent=2) + "\n")
        print("wrote", EXAMPLES_DIR / f"{name}.json", "and", API_DIR / f"{name}.json")


def main(argv=None):
    """Write every example (UI and API), then, with --calibrate or where it is missing, the
    saved calibration (it runs an example) and the examples again, then the thumbnails."""
    import sys

    from .comfy_host import ComfyServer
    from .thumbnails import write_thumbnails

    argv = sys.argv[1:] if argv is None else argv
    API_DIR.mkdir(parents=True, exist_ok=True)
    write_input_image()
    with ComfyServer() as server:
        object_info = server.object_info()
        write_examples(object_info)
        if "--calibrate" in argv or not SAVED_CALIBRATION.exists():
            write_saved_calibration(server)
            print("wrote", SAVED_CALIBRATION)
            write_examples(object_info)
    for path in write_thumbnails():
        print("wrote", path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
