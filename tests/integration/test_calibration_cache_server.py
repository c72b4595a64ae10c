"""LML Calibrate's disk cache in a real server: behind two LoRAs of the same strength
(LoraLoaderModelOnly on two LoRA files that differ only in their values) it fits two
calibrations, and after the models are unloaded and the node caches dropped (POST /free, as
after a restart) each LoRA gets its own calibration back from the cache, never the other's."""

from harness import loras
from harness.comfy_host import CHECKPOINT_NAME, ensure_checkpoint

CALIBRATE = "6"
LORAS = {"a": 1, "b": 2}  # file suffix -> seed of harness.loras
SEED = 9_200_001  # the same calibration noises in every run: only the LoRA differs
# A cheap fit: the test is about which calibration comes back, not its quality.
CHEAP = {"base": "euler", "history": 1, "iterations": 0, "reference_steps": 4,
         "field": "this scheduler"}


def lora_name(which):
    return f"lml_cache_test_{which}.safetensors"


def calibrate(server, object_info, which):
    """(calibration text, report) of LML Calibrate behind LoRA ``which`` at strength 1."""
    required = object_info["LMLCalibrate"]["input"]["required"]
    defaults = {name: spec[1]["default"] for name, spec in required.items()
                if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]}
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["1", 0], "lora_name": lora_name(which), "strength_model": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red house", "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        CALIBRATE: {"class_type": "LMLCalibrate", "inputs": {
            **defaults, "model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
            "latent_image": ["5", 0], "seed": SEED, "cfg": 4.0, "scheduler": "karras",
            "steps": 2, "samples": 4, **CHEAP}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": [CALIBRATE, 2]}},
    }
    outputs = server.run(graph)["outputs"][CALIBRATE]
    return outputs["lml_calibration"][0], outputs["text"][0]


def unload_models(server):
    """POST /free (unload the models, drop the node caches).  The server's worker reads these
    flags when it wakes or after its next prompt, so a tiny prompt is run after the POST: the
    next real prompt then starts from the unloaded state."""
    status, _ = server.post_json("/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    server.run({"1": {"class_type": "PrimitiveString", "inputs": {"value": "free"}},
                "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}})


def test_two_loras_of_equal_strength_get_their_own_calibrations(server, object_info):
    for which, seed in LORAS.items():
        loras.write_lora(server.base_dir / "models" / "loras" / lora_name(which),
                         ensure_checkpoint(), seed)
    cache = server.base_dir / "user" / "lml_calibrations"
    before = set(cache.glob("*.json"))

    fitted = {which: calibrate(server, object_info, which) for which in ("a", "b")}
    for _, report in fitted.values():
        assert "loaded from the cache" not in report, report
    assert fitted["a"][0] != fitted["b"][0]
    assert len(set(cache.glob("*.json")) - before) == 2

    for which in ("b", "a"):  # each after a restart-like unload; B first, while A was last fit
        unload_models(server)
        text, report = calibrate(server, object_info, which)
        assert "loaded from the cache" in report and text == fitted[which][0], which
