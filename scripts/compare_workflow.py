"""Write the LMLCompare example workflow (UI format + API copy) and the thumbnails.

    .host/venv/bin/python scripts/compare_workflow.py

Uses the same conversion as the other examples (scripts/workflows.py): the UI file is
``example_workflows/lml_compare.json`` (drag it onto the canvas), the API copy
``example_workflows/api/lml_compare.json`` (what the tests POST).  Widget order comes from a
running server's /object_info.  Afterwards every example's thumbnail is redrawn
(scripts/make_thumbnails.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_thumbnails  # noqa: E402
import workflows  # noqa: E402

NAME = "lml_compare"


def definition() -> dict:
    from lml_core import DEFAULTS

    omega = -1.0 if DEFAULTS["omega"] == "auto" else DEFAULTS["omega"]
    return {
        1: ("CheckpointLoaderSimple", {"ckpt_name": workflows.USER_CHECKPOINT}, (40, 120)),
        2: ("CLIPTextEncode", {"text": workflows.POSITIVE, "clip": [1, 1]}, (420, 40),
            "Positive prompt"),
        3: ("CLIPTextEncode", {"text": workflows.NEGATIVE, "clip": [1, 1]}, (420, 300),
            "Negative prompt"),
        4: ("EmptyLatentImage", {"width": workflows.SIZE, "height": workflows.SIZE,
                                 "batch_size": 1}, (420, 560)),
        5: ("LMLCompare", {
            "model": [1, 0], "seed": workflows.SEED, "steps": 10, "cfg": 7.0,
            "scheduler": "karras", "positive": [2, 0], "negative": [3, 0],
            "latent_image": [4, 0], "vae": [1, 2], "baseline_sampler": "euler",
            "solver": "euler", "rank": DEFAULTS["rank"], "damping": DEFAULTS["damping"],
            "kappa": DEFAULTS["kappa"], "damping_mode": DEFAULTS["damping_mode"],
            "omega": omega, "start_percent": DEFAULTS["start_percent"],
            "end_percent": DEFAULTS["end_percent"], "eta": 1.0, "s_noise": 1.0},
            (880, 120)),
        6: ("SaveImage", {"images": [5, 0], "filename_prefix": "lml/compare"}, (1300, 120)),
    }


def main():
    from comfy_host import ComfyServer

    sys.path.insert(0, str(workflows.ROOT))
    with ComfyServer() as server:
        object_info = server.object_info()
    graph = definition()
    api = workflows.to_api(graph)
    ui = workflows.to_ui(graph, object_info)
    assert workflows.ui_to_api(ui, object_info) == api
    workflows.API_DIR.mkdir(parents=True, exist_ok=True)
    ui_path = workflows.EXAMPLES_DIR / f"{NAME}.json"
    api_path = workflows.API_DIR / f"{NAME}.json"
    ui_path.write_text(json.dumps(ui, indent=2) + "\n")
    api_path.write_text(json.dumps(api, indent=2) + "\n")
    print("wrote", ui_path, "and", api_path)
    for path in make_thumbnails.write_thumbnails():
        print("wrote", path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
