"""LMLSamplerLab in a real server (fixture ``server``): the issue's acceptance study, one progress
bar over the websocket, validation before anything runs, and Cancel.  The study runs on the
trained digits checkpoint (its errors must fall with steps), Cancel on the random-weight one
(plumbing only)."""

import io
import math
import urllib.error

import pytest
from PIL import Image

from harness import comfy_host
from harness.comfy_host import (
    CHECKPOINT_NAME,
    PromptRejected,
    digits_checkpoint_name,
    output_files,
)

LAB = "5"


def lab_prompt(seed, samplers="euler,lml_euler,heun", steps="2,4,8", reference_steps=32,
               save=True, trained=True):
    """The Lab on the trained digits checkpoint (``trained``) or the random-weight one."""
    if trained:
        checkpoint, positive, negative = digits_checkpoint_name(), "a handwritten digit 2", ""
    else:
        checkpoint, positive, negative = CHECKPOINT_NAME, "a red house", "blurry"
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        LAB: {"class_type": "LMLSamplerLab", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
            "latent_image": ["4", 0], "vae": ["1", 2], "seed": seed, "cfg": 5.0,
            "scheduler": "karras", "samplers": samplers, "steps": steps,
            "reference_sampler": "dpmpp_2m", "reference_steps": reference_steps}},
    }
    if save:
        prompt["6"] = {"class_type": "SaveImage",
                       "inputs": {"images": [LAB, 1], "filename_prefix": "lab/plot"}}
        prompt["7"] = {"class_type": "SaveImage",
                       "inputs": {"images": [LAB, 2], "filename_prefix": "lab/grid"}}
    return prompt


def listen(server, prompt, on_first_progress=None, timeout=240):
    return comfy_host.listen(server, prompt, LAB, on_first_progress, timeout)


def test_object_info_lists_the_lab(object_info):
    info = object_info["LMLSamplerLab"]
    assert info["display_name"] == "LML Sampler Lab"
    assert info["category"] == object_info["KSampler"]["category"] and info["output_node"]
    assert info["output"] == ["STRING", "IMAGE", "IMAGE"]
    assert info["output_name"] == ["report", "plot", "grid"]
    required = info["input"]["required"]
    for name in ("model", "positive", "negative", "latent_image", "vae", "seed", "cfg",
                 "scheduler", "samplers", "steps", "reference_sampler", "reference_steps"):
        assert name in required, name
    assert "lml_euler" in required["reference_sampler"][1]["options"] or \
        "lml_euler" in required["reference_sampler"][0]
    # added since workflows were saved: last, optional, empty (the `scheduler` alone)
    assert info["input_order"]["optional"] == ["schedulers"]
    assert info["input"]["optional"]["schedulers"][1]["default"] == ""


def test_acceptance_study(server, fresh_seed):
    _, messages, entry = listen(server, lab_prompt(fresh_seed()))
    assert messages[-1]["type"] == "execution_success", messages[-1]
    (report,) = entry["outputs"][LAB]["lml_lab"]  # /history carries the UI output

    assert report["reference"]["sampler"] == "dpmpp_2m"
    assert report["reference"]["steps"] == report["reference"]["nfe"] == 32
    assert "RMS" in report["metric"]["error"]
    rows = report["rows"]
    assert len(rows) == 9
    assert [(r["sampler"], r["steps"]) for r in rows] == [
        (s, n) for s in ("euler", "lml_euler", "heun") for n in (2, 4, 8)]
    assert all(math.isfinite(r["error"]) and r["error"] > 0 for r in rows)
    assert all(r["psnr"] is None or math.isfinite(r["psnr"]) for r in rows)
    assert all(r["seconds"] > 0 for r in rows)
    euler = [r["error"] for r in rows if r["sampler"] == "euler"]
    assert euler[0] > euler[1] > euler[2], euler
    nfe = {(r["sampler"], r["steps"]): r["nfe"] for r in rows}
    assert [nfe[("heun", n)] for n in (2, 4, 8)] == [3, 7, 15]  # 2N-1: last step is Euler
    assert [nfe[("euler", n)] for n in (2, 4, 8)] == [2, 4, 8]
    assert [nfe[("lml_euler", n)] for n in (2, 4, 8)] == [2, 4, 8]
    assert any(r["best"] for r in rows)

    # One progress bar over the whole study: one max (all model calls), values rising to it.
    progress = [m["data"] for m in messages
                if m["type"] == "progress" and m["data"]["node"] == LAB]
    total = 32 + 2 * (2 + 4 + 8) + (3 + 7 + 15)
    assert {p["max"] for p in progress} == {total}
    values = [p["value"] for p in progress]
    assert values == sorted(values) and values[-1] == total

    images = output_files(entry, "images")
    assert sorted(i["filename"].split("_")[0] for i in images) == ["grid", "plot"]
    sizes = {}
    for image in images:
        picture = Image.open(io.BytesIO(server.view(image)))
        assert picture.format == "PNG"
        sizes[image["filename"].split("_")[0]] = picture.size
    assert sizes["plot"] == (768, 512)
    assert sizes["grid"][0] > 4 * 128 and sizes["grid"][1] > 3 * 128  # 3 + reference x 3 rows


def test_stochastic_sampler_is_noted(server, fresh_seed):
    entry = server.run(lab_prompt(fresh_seed(), samplers="euler_ancestral", steps="2",
                                  reference_steps=4, save=False))
    (report,) = entry["outputs"][LAB]["lml_lab"]
    assert any("euler_ancestral" in note and "noise" in note for note in report["notes"])


@pytest.mark.parametrize("change, named", [
    ({"samplers": "euler,eulr"}, "'eulr'"), ({"steps": "2,four"}, "'four'"),
    ({"steps": "0"}, "out of range"),
    # JSON NaN passes ComfyUI's own bounds check (NaN compares false): the node names it.
    ({"cfg": float("nan")}, "cfg must be a number, got nan"),
    ({"cfg": float("inf")}, "cfg must be between 0 and 100, got inf"),
    ({"schedulers": "karras,karas"}, "schedulers: unknown scheduler 'karas'"),
    ({"scheduler": "karas"}, "scheduler must be one of"),  # 0.3.75 does not check V3 combos
])
def test_bad_input_is_a_validation_error_before_anything_runs(server, fresh_seed, change,
                                                              named):
    prompt = lab_prompt(fresh_seed())
    prompt[LAB]["inputs"].update(change)
    history_before = len(server.get_json("/history"))
    with pytest.raises(PromptRejected) as rejected:
        server.queue(prompt)
    answer = rejected.value.response
    assert answer["error"]["type"] == "prompt_outputs_failed_validation"
    details = " ".join(e["details"] for e in answer["node_errors"][LAB]["errors"])
    assert named in details and next(iter(change)) in details
    assert len(server.get_json("/history")) == history_before


def test_schedulers_give_a_row_per_pair_and_the_best_pair_per_nfe(server, fresh_seed):
    """`schedulers` "karras,exponential": every sampler on both, against the one reference (on
    `scheduler`); the same prompt without the input (a workflow saved before it) gives the
    rows it always gave, which are the karras pairs' rows."""
    seed = fresh_seed()
    old = lab_prompt(seed, samplers="euler,heun", steps="2,3", reference_steps=6, save=False,
                     trained=False)
    assert "schedulers" not in old[LAB]["inputs"]
    (before,) = server.run(old)["outputs"][LAB]["lml_lab"]
    assert [(r["label"], r["scheduler"], r["steps"]) for r in before["rows"]] == [
        (s, "karras", n) for s in ("euler", "heun") for n in (2, 3)]

    prompt = lab_prompt(seed, samplers="euler,heun", steps="2,3", reference_steps=6,
                        trained=False)
    prompt[LAB]["inputs"]["schedulers"] = "karras,exponential"
    _, messages, entry = listen(server, prompt)
    assert messages[-1]["type"] == "execution_success", messages[-1]
    (report,) = entry["outputs"][LAB]["lml_lab"]
    rows = report["rows"]
    assert [(r["label"], r["sampler"], r["scheduler"], r["steps"]) for r in rows] == [
        (f"{s} + {c}", s, c, n) for s in ("euler", "heun") for c in ("karras", "exponential")
        for n in (2, 3)]
    same = lambda row: {k: v for k, v in row.items() if k not in ("seconds", "label", "best")}
    assert [same(r) for r in rows if r["scheduler"] == "karras"] == [
        same(r) for r in before["rows"]]
    assert report["reference"]["nfe"] == before["reference"]["nfe"] == 6
    # the best pair at each NFE: the lowest error there, unless fewer calls do better
    for nfe in {r["nfe"] for r in rows}:
        at_nfe = [r for r in rows if r["nfe"] == nfe]
        lowest = min(r["error"] for r in at_nfe)
        beaten = any(r["error"] <= lowest for r in rows if r["nfe"] < nfe)
        assert [r["best"] for r in at_nfe] == [r["error"] == lowest and not beaten
                                               for r in at_nfe], nfe
    assert any(r["best"] for r in rows)

    progress = [m["data"] for m in messages
                if m["type"] == "progress" and m["data"]["node"] == LAB]
    assert {p["max"] for p in progress} == {6 + 2 * (2 + 3) + 2 * (3 + 5)}
    images = output_files(entry, "images")
    sizes = {i["filename"].split("_")[0]: Image.open(io.BytesIO(server.view(i))).size
             for i in images}
    assert sizes["plot"] == (768, 512)
    assert sizes["grid"][1] > 4 * 128  # a row of pictures per pair (64 px shown at 128)


def has_jobs_api(server):
    """0.33 has a jobs API (/api/jobs, what its queue panel lists); 0.3.75 has not."""
    try:
        server.get_json("/api/jobs")
    except urllib.error.HTTPError as error:
        assert error.code == 404
        return False
    return True


CANCELS = {  # the old Cancel (both hosts) and 0.33's per-job one
    "interrupt": lambda server, prompt_id: server.post_json("/interrupt", {}),
    "jobs_cancel": lambda server, prompt_id: server.post_json(f"/api/jobs/{prompt_id}/cancel",
                                                              {}),
}


@pytest.mark.parametrize("cancel", sorted(CANCELS))
def test_cancel_stops_the_study_and_the_server_goes_on(server, fresh_seed, cancel):
    if cancel == "jobs_cancel" and not has_jobs_api(server):
        pytest.skip("this host has no jobs API (0.3.75); /interrupt is its Cancel")
    prompt = lab_prompt(fresh_seed(), samplers="euler,heun", steps="8,16", reference_steps=200,
                        trained=False)
    prompt_id, messages, entry = listen(
        server, prompt, on_first_progress=lambda prompt_id: CANCELS[cancel](server, prompt_id))
    assert messages[-1]["type"] == "execution_interrupted"
    progress = [m["data"]["value"] for m in messages
                if m["type"] == "progress" and m["data"]["node"] == LAB]
    assert max(progress) < 200  # stopped inside the reference run
    assert entry["status"]["status_str"] == "error"  # an interrupted prompt, on both hosts
    assert "execution_interrupted" in [kind for kind, _ in entry["status"]["messages"]]
    assert not output_files(entry, "images")
    if has_jobs_api(server):
        assert server.get_json(f"/api/jobs/{prompt_id}")["status"] == "cancelled"

    follow_up = lab_prompt(fresh_seed(), samplers="euler", steps="2", reference_steps=4)
    assert server.run(follow_up)["status"]["status_str"] == "success"


def test_help_page_is_served(server):
    status, body = server.request("/extensions/comfyui-lml/docs/LMLSamplerLab.md")
    assert status == 200
    for word in ("reference", "nfe", "RMS", "PSNR", "Stochastic", "best"):
        assert word in body.decode(), word
