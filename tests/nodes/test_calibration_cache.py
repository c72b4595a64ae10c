"""LML Calibrate's disk cache never hands back another model's calibration: the key tells apart
LoRAs, model_options hooks, object patches, ControlNet hints and the latent; what it cannot read
means no cache (and the report says so); an unreadable cache file is refitted and replaced,
and a file is written whole or not at all.  The test checkpoint, the host's LoRA loader, its
ControlNet apply node and its model patches, in-process."""

import itertools
import json
import logging
import os
import subprocess

import comfy.controlnet
import comfy.model_management
import comfy.sd
import comfy_extras.nodes_model_advanced as advanced
import comfy_extras.nodes_pag as pag
import folder_paths
import pytest
import torch

import nodes as host_nodes  # ComfyUI's nodes.py: its tree is first on sys.path
from harness import loras
from harness.comfy_host import HOST_PYTHON, ROOT
from lml_core import Calibration

LATENT = torch.zeros([1, 4, 4, 4])
SETTINGS = {"seed": 1, "steps": 2}  # what the node adds; the key only needs it stable
# A cheap fit (several seconds on a busy CPU): these tests are about which file is used.
CHEAP = {"base": "euler", "history": 1, "iterations": 0, "reference_steps": 4,
         "field": "this scheduler"}


@pytest.fixture
def user_dir(tmp_path):
    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_user_directory(old)


@pytest.fixture(autouse=True)
def unload_models():
    yield
    comfy.model_management.unload_all_models()  # no LoRA left applied to the shared model


@pytest.fixture
def cache(pack):
    return pack.nodes.calibration_cache


def with_lora(model, seed, strength=1.0):
    """``model`` with the test LoRA of ``seed``, through the host's loader (LoraLoader's)."""
    lora = loras.lora_weights(loras.model_shapes(model), seed)
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
    return patched


def host_patch(node_class, *args):
    """A host node's patched MODEL (a V1 node's ``patch``; a V3 one's ``execute``)."""
    if hasattr(node_class, "patch"):
        return node_class().patch(*args)[0]
    return node_class.execute(*args).result[0]


def calibrate(pack, model, conds, seed=3):
    inputs = {i.id: i.default for i in pack.nodes.calibrate_node.calibration_inputs()}
    out = pack.nodes.NODES_BY_ID["LMLCalibrate"].execute(
        model=model, positive=conds[0], negative=conds[1], latent_image={"samples": LATENT},
        seed=seed, cfg=4.0, scheduler="karras", steps=2, samples=4, **{**inputs, **CHEAP})
    _, text, report = out.result
    return text, report


def test_two_loras_of_equal_strength_have_two_keys_and_one_lora_one(cache, sd15, conds):
    model = sd15[0]
    key = lambda m: cache.key(m, *conds, LATENT, SETTINGS)[0]
    a, b = with_lora(model, 1), with_lora(model, 2)
    adapters = {type(patch[1]).__name__ for patches in a.patches.values() for patch in patches}
    assert len(a.patches) == len(b.patches) > 10 and adapters == {"LoRAAdapter"}
    keys = (key(model), key(a), key(b), key(with_lora(model, 1, strength=0.5)))
    assert None not in keys and len(set(keys)) == 4
    assert key(with_lora(model, 1)) == keys[1]  # the same LoRA loaded again

    # Loaded, A's update is in the model's own weights (ComfyUI keeps the originals aside):
    # the keys stay those of the weights on disk plus each model's patches.
    name = next(iter(a.patches))
    before = model.model.state_dict()[name].cpu().clone()  # (on a GPU: loaded there)
    comfy.model_management.load_models_gpu([a])
    assert not torch.equal(model.model.state_dict()[name].cpu(), before)
    assert (key(model), key(a), key(b)) == keys[:3]
    comfy.model_management.unload_all_models()
    assert torch.equal(model.model.state_dict()[name].cpu(), before)
    assert (key(model), key(a), key(with_lora(model, 2))) == keys[:3]


def test_hooks_and_object_patches_change_the_key(cache, sd15, conds):
    model = sd15[0]
    key = lambda m: cache.key(m, *conds, LATENT, SETTINGS)[0]

    def cfg_function(scale):
        return lambda args: args["uncond"] + scale * (args["cond"] - args["uncond"])

    def default_scale(value):
        return lambda args, scale=value: args["denoised"] * scale

    class Scale:  # a callable object, and its bound method: their state is the object's
        def __init__(self, scale):
            self.scale = scale

        def __call__(self, args):
            return args["denoised"] * self.scale

        def method(self, args):
            return args["denoised"] * self.scale

    def patched(method, *args):
        m = model.clone()
        getattr(m, method)(*args)
        return m

    variants = [
        model,
        host_patch(advanced.RescaleCFG, model, 0.7),
        host_patch(advanced.RescaleCFG, model, 0.3),
        host_patch(pag.PerturbedAttentionGuidance, model, 3.0),
        host_patch(pag.PerturbedAttentionGuidance, model, 1.5),
        patched("set_model_sampler_cfg_function", cfg_function(1.5)),
        patched("set_model_sampler_cfg_function", cfg_function(2.5)),
        patched("set_model_sampler_post_cfg_function", lambda args: args["denoised"]),
        patched("set_model_sampler_post_cfg_function", default_scale(0.5)),
        patched("set_model_sampler_post_cfg_function", default_scale(0.6)),
        patched("set_model_sampler_post_cfg_function", Scale(0.5)),
        patched("set_model_sampler_post_cfg_function", Scale(0.6)),
        patched("set_model_sampler_post_cfg_function", Scale(0.5).method),
        patched("set_model_sampler_post_cfg_function", Scale(0.6).method),
        patched("set_model_attn1_patch", lambda q, k, v, extra_options: (q, k, v)),
        patched("set_model_unet_function_wrapper",
                lambda apply, args: apply(args["input"], args["timestep"], **args["c"])),
        host_patch(advanced.ModelSamplingDiscrete, model, "v_prediction", False),
    ]
    keys = [key(m) for m in variants]
    assert None not in keys and len(set(keys)) == len(keys)
    assert key(host_patch(advanced.RescaleCFG, model, 0.7)) == keys[1]
    assert key(host_patch(pag.PerturbedAttentionGuidance, model, 3.0)) == keys[3]
    assert key(patched("set_model_sampler_cfg_function", cfg_function(1.5))) == keys[5]
    assert key(patched("set_model_sampler_post_cfg_function", Scale(0.6).method)) == keys[13]


def test_what_cannot_be_read_means_no_key_and_cycles_are_cut(cache, sd15, conds):
    def counting():
        calls = itertools.count()  # C-implemented: its state cannot be read
        return lambda args: args["denoised"] * (next(calls) >= 0)

    model = sd15[0].clone()
    model.set_model_sampler_post_cfg_function(counting())
    key, reason = cache.key(model, *conds, LATENT, SETTINGS)
    assert key is None and "itertools.count has no attributes to read" in reason

    deep = sd15[0].clone()
    nested = []
    for _ in range(100):
        nested = [nested]
    deep.model_options["transformer_options"]["lml_test"] = nested
    key, reason = cache.key(deep, *conds, LATENT, SETTINGS)
    assert key is None and "nested deeper than" in reason

    looped = {"scale": 1.0}
    looped["self"] = looped
    model = sd15[0].clone()
    model.model_options["transformer_options"]["lml_test"] = looped
    first = cache.key(model, *conds, LATENT, SETTINGS)[0]
    assert first is not None and first == cache.key(model, *conds, LATENT, SETTINGS)[0]
    looped["scale"] = 2.0
    assert cache.key(model, *conds, LATENT, SETTINGS)[0] not in (None, first)


def test_controlnet_hints_are_in_the_key(cache, sd15, conds):
    apply = host_nodes.ControlNetApplyAdvanced().apply_controlnet
    torch.manual_seed(0)
    control = comfy.controlnet.ControlNet(torch.nn.Conv2d(3, 4, 1))
    other = comfy.controlnet.ControlNet(torch.nn.Conv2d(3, 4, 1))
    hint = torch.rand([1, 32, 32, 3])

    def key(*applied):
        positive, negative = conds
        for net, image, strength in applied:
            positive, negative = apply(positive, negative, net, image, strength, 0.0, 1.0)
        return cache.key(sd15[0], positive, negative, LATENT, SETTINGS)[0]

    once = key((control, hint, 0.8))
    variants = [key(), once, key((control, hint * 0.5, 0.8)), key((control, hint, 0.6)),
                key((other, hint, 0.8)), key((control, hint, 0.8), (other, hint, 0.8))]
    assert None not in variants and len(set(variants)) == len(variants)
    assert key((control, hint.clone(), 0.8)) == once
    # What sampling sets on the ControlNet (and cleanup clears) is not part of it.
    positive, negative = apply(*conds, control, hint, 0.8, 0.0, 1.0)
    net = positive[0][1]["control"]
    net.cond_hint, net.timestep_range = torch.ones([1, 3, 32, 32]), (999.0, 0.0)
    assert cache.key(sd15[0], positive, negative, LATENT, SETTINGS)[0] == once


def test_the_latent_the_pack_version_and_the_format_are_in_the_key(cache, sd15, conds,
                                                                   monkeypatch):
    key = lambda latent=LATENT: cache.key(sd15[0], *conds, latent, SETTINGS)[0]
    first = key()
    assert cache.PACK_VERSION not in ("", "unknown")
    assert key(torch.ones_like(LATENT)) != first
    monkeypatch.setattr(cache, "PACK_VERSION", cache.PACK_VERSION + ".1")
    second = key()
    monkeypatch.setattr(cache, "CALIBRATION_FORMAT", "lml-calibration/0")
    assert len({first, second, key()}) == 3


def test_keys_are_the_same_in_a_fresh_process(cache, sd15, conds):
    """A restart reads its own cache: no object id or hash seed is in the key."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONHASHSEED": "12345",
           "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([str(HOST_PYTHON), str(ROOT / "tests/nodes/cache_key_probe.py")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr[-3000:]
    theirs = json.loads(probe.stdout.strip().splitlines()[-1])
    models = {"base": sd15[0], "lora": with_lora(sd15[0], 1),
              "rescale": host_patch(advanced.RescaleCFG, sd15[0], 0.7)}
    ours = {name: cache.key(m, *conds, LATENT, SETTINGS)[0] for name, m in models.items()}
    assert None not in ours.values() and len(set(ours.values())) == 3
    assert theirs == ours


def test_calibrations_behind_two_loras_are_not_shared(pack, sd15, conds, user_dir):
    a_text, a_report = calibrate(pack, with_lora(sd15[0], 1), conds)
    b_text, b_report = calibrate(pack, with_lora(sd15[0], 2), conds)  # A is still applied
    assert "loaded from the cache" not in a_report + b_report
    assert json.loads(a_text)["report"]["heldout_rms_bases"] != \
        json.loads(b_text)["report"]["heldout_rms_bases"]
    assert len(list((user_dir / "lml_calibrations").glob("*.json"))) == 2
    comfy.model_management.unload_all_models()  # as after a restart
    for seed, text in ((2, b_text), (1, a_text)):
        again, report = calibrate(pack, with_lora(sd15[0], seed), conds)
        assert "loaded from the cache" in report and again == text


def test_a_model_that_cannot_be_read_calibrates_without_the_cache(pack, sd15, conds, user_dir):
    def counting():
        calls = itertools.count()
        return lambda args: args["denoised"] * (next(calls) >= 0)

    model = sd15[0].clone()
    model.set_model_sampler_post_cfg_function(counting())
    text, report = calibrate(pack, model, conds)
    Calibration.from_json(text)
    assert "not cached: itertools.count has no attributes to read" in report
    assert not (user_dir / "lml_calibrations").exists()


def test_an_unreadable_cache_file_is_refitted_and_replaced(pack, sd15, conds, user_dir, caplog):
    calibrate(pack, sd15[0], conds)
    (path,) = (user_dir / "lml_calibrations").glob("*.json")
    for spoil in ("truncate", "folder"):
        if spoil == "truncate":
            path.write_text(path.read_text()[:200])
        else:
            path.unlink()
            path.mkdir()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            text, report = calibrate(pack, sd15[0], conds)
        assert "loaded from the cache" not in report
        assert any(str(path) in r.getMessage() and "cannot be read" in r.getMessage()
                   for r in caplog.records), spoil
        assert path.is_file() and path.read_text() == text
        assert calibrate(pack, sd15[0], conds)[1].endswith(f"loaded from the cache: {path}")
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("content", [b"\xff\xfe{not utf-8", b'{"base": "euler"}',
                                     b'{"format": "lml-calibration/0", "base": "euler", '
                                     b'"sigmas": [1, 0], "corrections": [[0]], '
                                     b'"fitted_on": {"steps": 1}}'])
def test_load_refuses_bytes_and_calibrations_lml_core_refuses(cache, tmp_path, caplog, content):
    path = tmp_path / "spoilt.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert cache.load(path) is None
    assert str(path) in caplog.text and "calibrating again" in caplog.text
    assert cache.load(tmp_path / "missing.json") is None


def test_a_failed_write_leaves_the_old_file_and_no_temporary(cache, tmp_path, monkeypatch):
    calibration = Calibration(base="euler", sigmas=[2.0, 1.0, 0.0], corrections=[[0.0], [0.0]],
                              fitted_on={"steps": 2, "sigma_max": 2.0, "sigma_min": 1.0,
                                         "model_kind": "eps", "sigmas": [2.0, 1.0, 0.0],
                                         "latent_shape": [4, 8, 8]})
    path = tmp_path / "lml_calibrations" / "key.json"
    assert cache.save(path, calibration) is None
    assert Calibration.from_json(path.read_text()) == calibration
    path.write_text("old")

    def refuse(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.os, "replace", refuse)
    note = cache.save(path, calibration)
    assert note.startswith(f"not cached: could not write {path}") and "No space" in note
    assert path.read_text() == "old" and sorted(path.parent.iterdir()) == [path]
