"""What ComfyUI serves for the pack over HTTP: the extension JS, the help pages, the example
workflows as templates with thumbnails, and LMLCompare's labelled side-by-side image."""

import io
import json
import urllib.error

import numpy as np
import pytest
from PIL import Image

from harness import comfy_host
from harness.comfy_host import ROOT

PACK = comfy_host.PACK_NAME
EXAMPLES = ROOT / "example_workflows"
UI_EXAMPLES = sorted(p.stem for p in EXAMPLES.glob("*.json"))


def test_extensions_lists_the_pack_js(server):
    extensions = server.get_json("/extensions")
    ours = sorted(e for e in extensions if e.startswith(f"/extensions/{PACK}/"))
    assert ours == [f"/extensions/{PACK}/{name}"
                    for name in ("lml.js", "lml_lab.js", "on_node_widget.js")]
    # the two extensions register through the shared widget scaffolding (both node renderers)
    for path, markers in zip(ours, ((b"lml_diagnostics", b"registerRunWidget(app"),
                                    (b"lml_lab", b"registerRunWidget(app"),
                                    (b"registerExtension", b"triggerDraw"))):
        status, body = server.request(path)
        assert status == 200
        assert all(marker in body for marker in markers), path
        if not path.endswith("on_node_widget.js"):
            assert b'from "./on_node_widget.js"' in body


@pytest.mark.parametrize("node", ["KSamplerLML", "SamplerLML", "LMLCompare"])
def test_help_page_is_served_where_the_frontend_looks(server, node):
    # The frontend fetches /extensions/<pack>/docs/<Node>.md for custom nodes.
    status, body = server.request(f"/extensions/{PACK}/docs/{node}.md")
    assert status == 200
    text = body.decode()
    for word in ("rank", "damping", "kappa", "damping_mode", "omega", "Recommended settings"):
        assert word in text, (node, word)
    assert node in server.object_info()  # a help page for a node that exists


def test_workflow_templates_list_every_example_with_a_thumbnail(server):
    assert len(UI_EXAMPLES) >= 5 and "lml_compare" in UI_EXAMPLES
    listing = server.get_json("/api/workflow_templates")
    assert sorted(listing[PACK]) == UI_EXAMPLES  # the API copies in api/ are not templates
    for name in UI_EXAMPLES:
        status, raw = server.request(f"/api/workflow_templates/{PACK}/{name}.json")
        workflow = json.loads(raw)
        assert status == 200 and workflow["nodes"] and "links" in workflow, name
        status, jpeg = server.request(f"/api/workflow_templates/{PACK}/{name}.jpg")
        assert status == 200 and jpeg[:3] == b"\xff\xd8\xff", name
        assert len(jpeg) < 50_000, (name, len(jpeg))
        assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_thumbnails_also_come_from_the_packs_own_route(server):
    # For hosts whose template route serves *.json only: the pack's route answers the same
    # thumbnail URLs (here reached without the /api prefix, where 0.3.75 has no static mount).
    for name in UI_EXAMPLES:
        status, jpeg = server.request(f"/workflow_templates/{PACK}/{name}.jpg")
        assert status == 200 and jpeg == (EXAMPLES / f"{name}.jpg").read_bytes(), name
    for bad in ("lml_compare.json", "nope.jpg", "..%2F__init__.py", "api%2Flml_compare.json"):
        with pytest.raises(urllib.error.HTTPError) as error:
            server.request(f"/workflow_templates/{PACK}/{bad}")
        assert error.value.code == 404, bad


def _compare_prompt(seed, size=128, steps=3):
    """LMLCompare beside the built-in KSampler and KSamplerLML with the same settings."""
    text = {"1": {"class_type": "CheckpointLoaderSimple",
                  "inputs": {"ckpt_name": comfy_host.CHECKPOINT_NAME}},
            "2": {"class_type": "CLIPTextEncode",
                  "inputs": {"text": "a red house", "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
            "4": {"class_type": "EmptyLatentImage",
                  "inputs": {"width": size, "height": size, "batch_size": 1}}}
    shared = {"model": ["1", 0], "seed": seed, "steps": steps, "cfg": 6.0,
              "scheduler": "karras", "positive": ["2", 0], "negative": ["3", 0],
              "latent_image": ["4", 0]}
    lml = {"solver": "euler", "rank": 1, "damping": 0.5, "kappa": 1.0,
           "damping_mode": "relative", "omega": 0.75, "start_percent": 0.0,
           "end_percent": 1.0, "eta": 1.0, "s_noise": 1.0}
    return {
        **text,
        "5": {"class_type": "LMLCompare",
              "inputs": {**shared, "vae": ["1", 2], "baseline_sampler": "euler", **lml}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "cmp"}},
        "7": {"class_type": "KSampler",
              "inputs": {**shared, "sampler_name": "euler", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ks"}},
        "10": {"class_type": "KSamplerLML", "inputs": {**shared, "denoise": 1.0, **lml}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0],
                                                     "filename_prefix": "lml"}},
    }


def _image(server, entry, node_id):
    return np.asarray(Image.open(io.BytesIO(server.view(entry["outputs"][node_id]["images"][0]))))


def test_lml_compare_returns_one_image_labelled_above_its_enlarged_panels(server, fresh_seed):
    size, steps = 128, 3
    entry = server.run(_compare_prompt(fresh_seed(), size, steps))
    assert len(entry["outputs"]["6"]["images"]) == 1
    grid = _image(server, entry, "6")
    baseline, lml = _image(server, entry, "9"), _image(server, entry, "12")
    # 128 px pictures are shown at 256 px (nearest neighbour), side by side under the labels
    panel = 2 * size
    top = grid.shape[0] - panel
    assert grid.shape[1:] == (2 * panel, 3) and 0 < top < size
    band, left, right = grid[:top], grid[top:, :panel], grid[top:, panel:]

    # The band carries each panel's label (white text on a dark band) ...
    for half in (band[:, :panel], band[:, panel:]):
        assert (half.min(axis=2) > 200).sum() >= 20, "no label text in the band"
    # ... and under it the panels are exactly the plain runs' images, enlarged.
    for shown, plain in ((left, baseline), (right, lml)):
        assert np.array_equal(shown, plain.repeat(2, axis=0).repeat(2, axis=1))
    # The two panels differ: the LM correction changed the result.
    assert not np.array_equal(baseline, lml)

    diagnostics = entry["outputs"]["5"]["lml_diagnostics"][0]
    assert diagnostics["solver"] == "euler"
    assert len(diagnostics["sigmas"]) == len(diagnostics["strength"]) == steps
    assert diagnostics["strength"][0] == 0.0 and max(diagnostics["strength"]) > 0.0


@pytest.mark.parametrize("node, words", [
    ("LMLCalibrate", ("samples", "held out", "Cancel", "lml_calibrations", "Cost",
                      "batch_size", "Memory")),
    ("SamplerLMLCalibrated", ("calibration", "refused", "bit for bit")),
    ("LMLCalibrateSigmas", ("SIGMAS", "held out", "Cancel", "sampler_name", "Cost",
                            "batch_size")),
    ("SigmasLMLCalibrated", ("calibration", "refused", "bit for bit")),
])
def test_calibration_help_pages_are_served(server, node, words):
    status, body = server.request(f"/extensions/{PACK}/docs/{node}.md")
    assert status == 200
    for word in words:
        assert word in body.decode(), (node, word)
    assert node in server.object_info()
