"""LMLSamplerLab in-process on the test checkpoint (8x8 latents, few steps): counted model calls,
the same noise and sigmas as core KSampler, one progress bar, Cancel, validation."""

import json

import comfy.model_management
import comfy.sample
import comfy.utils
import pytest
import torch

LATENT = {"samples": torch.zeros([1, 4, 8, 8])}


def lab(pack):
    return pack.nodes.NODES_BY_ID["LMLSamplerLab"]


def study(pack, sd15, conds, samplers, steps, reference="dpmpp_2m", reference_steps=8,
          model=None, seed=5, cfg=5.0):
    out = lab(pack).execute(model or sd15[0], conds[0], conds[1], LATENT, sd15[2], seed, cfg,
                            "karras", samplers, steps, reference, reference_steps)
    report = json.loads(out.args[0])
    assert out.ui == {"lml_lab": [report]}
    return report, out


def test_registered_as_a_v3_node_beside_the_hosts_ksampler(pack):
    from comfy_api.latest import io

    import nodes as host_nodes

    node = lab(pack)
    assert issubclass(node, io.ComfyNode)
    assert node.GET_SCHEMA().display_name == "LML Sampler Lab"
    info = node.GET_NODE_INFO_V1()
    assert info["category"] == host_nodes.KSampler.CATEGORY and info["output_node"]
    assert info["output"] == ["STRING", "IMAGE", "IMAGE"]
    assert info["output_name"] == ["report", "plot", "grid"]
    required = info["input"]["required"]
    assert required["samplers"][1]["default"] == "euler,lml_euler,dpmpp_2m,ipndm_v,deis,uni_pc"
    assert required["steps"][1]["default"] == "4,6,8,12,20"
    assert required["reference_steps"][1]["default"] == 100
    assert required["reference_sampler"][1]["default"] == "dpmpp_2m"


def test_validation_names_the_bad_sampler_or_step(pack):
    node = lab(pack)
    assert node.validate_inputs(samplers="euler,lml_euler,heun", steps="2,4,8") is True
    assert "'eulr'" in node.validate_inputs(samplers="euler,eulr", steps="2")
    assert "'x'" in node.validate_inputs(samplers="euler", steps="2,x")
    assert node.validate_inputs(samplers=None, steps=None) is True  # from links: at run time


def counted(model):
    """A clone of ``model`` and the list its diffusion model calls append to."""
    calls, clone = [], model.clone()

    def count(apply_model, args):
        calls.append(1)
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone.set_model_unet_function_wrapper(count)
    return clone, calls


@pytest.mark.parametrize("cfg, message", [
    (float("nan"), "cfg must be a number, got nan"),  # NaN passes ComfyUI's own bounds check
    (float("inf"), "cfg must be between 0 and 100, got inf"),
    (-0.5, "cfg must be between 0 and 100, got -0.5"),  # naming cfg skips ComfyUI's bounds
])
def test_bad_cfg_is_refused_naming_cfg_before_anything_runs(pack, sd15, conds, host_call, cfg,
                                                            message):
    validate = lambda value: host_call(lab(pack), "validate_inputs", samplers="euler",
                                       steps="2", cfg=value)
    assert validate(cfg) == message
    assert validate(0.0) is True and validate(100.0) is True  # the widget's bounds
    model, calls = counted(sd15[0])
    with pytest.raises(ValueError) as refused:  # a linked cfg: refused when the node runs
        host_call(lab(pack), "execute", model=model, positive=conds[0], negative=conds[1],
                  latent_image=LATENT, vae=sd15[2], seed=5, cfg=cfg, scheduler="karras",
                  samplers="euler", steps="2", reference_sampler="euler", reference_steps=2)
    assert str(refused.value) == message and calls == []


MULTI_EVAL = ["euler", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral",
              "dpmpp_sde", "seeds_2", "seeds_3", "sa_solver_pece", "uni_pc", "dpm_fast",
              "lml_euler", "lml_dpmpp_2m"]


def test_nfe_is_counted_and_matches_the_progress_table(pack, sd15, conds):
    report, _ = study(pack, sd15, conds, ",".join(MULTI_EVAL), "3", reference="euler",
                      reference_steps=2, cfg=1.0)
    expected = pack.lml_core.expected_nfe
    counted = {row["sampler"]: row["nfe"] for row in report["rows"]}
    assert counted == {name: expected(name, 3) for name in MULTI_EVAL}
    assert counted["heun"] == 5 and counted["seeds_3"] == 7  # 2N-1, 3N-2
    # cfg 1: no uncond, one forward pass per evaluation
    assert all(row["model_calls"] == row["nfe"] for row in report["rows"])


def test_same_noise_and_sigmas_as_core_ksampler(pack, sd15, conds):
    """A row's error equals the RMS distance between core KSampler runs (comfy.sample.sample,
    which drops the penultimate sigma for dpm_2) with the same seed; the reference sampler at
    the reference steps is the reference itself."""
    model, seed, cfg = sd15[0], 5, 5.0
    report, _ = study(pack, sd15, conds, "dpm_2,euler,dpmpp_2m", "3,8", seed=seed, cfg=cfg)

    def ksampler(name, steps):
        noise = comfy.sample.prepare_noise(LATENT["samples"], seed)
        return comfy.sample.sample(model, noise, steps, cfg, name, "karras", conds[0], conds[1],
                                   LATENT["samples"], disable_pbar=True, seed=seed)

    reference = ksampler("dpmpp_2m", 8)
    rows = {(r["sampler"], r["steps"]): r for r in report["rows"]}
    for name in ("dpm_2", "euler"):
        direct = float((ksampler(name, 3) - reference).pow(2).mean().sqrt())
        assert rows[(name, 3)]["error"] == pytest.approx(direct, rel=1e-5, abs=1e-6)
    assert rows[("dpmpp_2m", 8)]["error"] == 0.0 and rows[("dpmpp_2m", 8)]["psnr"] is None
    assert rows[("dpm_2", 3)]["nfe"] == 5  # 3 steps after the discard, 2N-1 calls


def test_one_progress_bar_over_the_whole_study(pack, sd15, conds, monkeypatch):
    updates = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK",
                        lambda value, total, preview, node_id=None: updates.append((value, total)))
    report, _ = study(pack, sd15, conds, "euler,heun", "2,3", reference_steps=4)
    total = 4 + (2 + 3) + (3 + 5)
    assert {t for _, t in updates} == {total}
    values = [v for v, _ in updates]
    assert values == sorted(values) and values[-1] == total
    assert sum(r["nfe"] for r in report["rows"]) + report["reference"]["nfe"] == total


def test_cancel_stops_the_study_and_leaves_nothing_behind(pack, sd15, conds):
    model = sd15[0]
    fresh, _ = study(pack, sd15, conds, "euler,lml_euler", "2,3", reference_steps=4)
    calls = {"n": 0}

    def interrupt_at_seventh_call(apply_model, args):
        calls["n"] += 1
        if calls["n"] == 7:  # inside the second sampler run: what POST /interrupt does
            comfy.model_management.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    cancelled = model.clone()
    cancelled.set_model_unet_function_wrapper(interrupt_at_seventh_call)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        study(pack, sd15, conds, "euler,lml_euler", "2,3", reference_steps=4, model=cancelled)
    assert calls["n"] == 7  # stopped at the next evaluation, nothing more ran
    assert not comfy.model_management.processing_interrupted()

    again, _ = study(pack, sd15, conds, "euler,lml_euler", "2,3", reference_steps=4)
    strip = lambda r: [{k: v for k, v in row.items() if k != "seconds"} for row in r["rows"]]
    assert strip(again) == strip(fresh)
