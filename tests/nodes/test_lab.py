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
          model=None, seed=5, cfg=5.0, **schedulers):
    """The Lab's report and output; ``schedulers=...`` passes the input, left out it is a
    workflow saved before the input existed."""
    out = lab(pack).execute(model or sd15[0], conds[0], conds[1], LATENT, sd15[2], seed, cfg,
                            "karras", samplers, steps, reference, reference_steps,
                            **schedulers)
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
    # Added since workflows were saved: last and optional (an API prompt without it still
    # validates; a saved UI workflow gets the default), empty = the `scheduler` alone.
    order = info["input_order"]
    assert order["required"] == ["model", "positive", "negative", "latent_image", "vae", "seed",
                                 "cfg", "scheduler", "samplers", "steps", "reference_sampler",
                                 "reference_steps"]
    assert order["optional"] == ["schedulers"]
    assert info["input"]["optional"]["schedulers"][1]["default"] == ""


def test_validation_names_the_bad_sampler_or_step(pack):
    node = lab(pack)
    assert node.validate_inputs(samplers="euler,lml_euler,heun", steps="2,4,8") is True
    assert "'eulr'" in node.validate_inputs(samplers="euler,eulr", steps="2")
    assert "'x'" in node.validate_inputs(samplers="euler", steps="2,x")
    assert node.validate_inputs(samplers=None, steps=None) is True  # from links: at run time


@pytest.mark.parametrize("inputs, message", [
    ({"schedulers": "karras,karas"}, "schedulers: unknown scheduler 'karas'; use names from "
                                     "ComfyUI's scheduler list: "),
    ({"schedulers": "karras Exponential"}, "schedulers: unknown scheduler 'Exponential'"),
    ({"scheduler": "karas"}, "scheduler must be one of "),
    ({"reference_sampler": "dpmpp2m"}, "reference_sampler must be one of "),
])
def test_a_bad_scheduler_is_refused_naming_the_input_before_anything_runs(
        pack, sd15, conds, host_call, inputs, message):
    import comfy.samplers

    validate = lambda **changes: host_call(lab(pack), "validate_inputs", samplers="euler",
                                           steps="2", **changes)
    assert validate(**inputs).startswith(message)
    if "schedulers" in inputs:  # the message lists the host's names
        assert ", ".join(comfy.samplers.KSampler.SCHEDULERS) in validate(**inputs)
    assert validate(schedulers="") is True and validate(schedulers=" karras, exponential,") \
        is True
    model, calls = counted(sd15[0])
    with pytest.raises(ValueError) as refused:  # linked: refused when the node runs
        host_call(lab(pack), "execute", **{
            "model": model, "positive": conds[0], "negative": conds[1], "latent_image": LATENT,
            "vae": sd15[2], "seed": 5, "cfg": 5.0, "scheduler": "karras", "samplers": "euler",
            "steps": "2", "reference_sampler": "euler", "reference_steps": 2, **inputs})
    assert str(refused.value).startswith(message) and calls == []


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


def ksampler(model, conds, name, scheduler, steps, seed=5, cfg=5.0):
    """Core KSampler's latent (comfy.sample.sample: its sigmas and discard rule)."""
    noise = comfy.sample.prepare_noise(LATENT["samples"], seed)
    return comfy.sample.sample(model, noise, steps, cfg, name, scheduler, conds[0], conds[1],
                               LATENT["samples"], disable_pbar=True, seed=seed)


def without_seconds(report):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in report["rows"]]


def test_schedulers_give_a_row_per_sampler_and_scheduler_pair(pack, sd15, conds):
    """Every sampler on every listed scheduler, each run as KSampler runs that pair, all against
    the one reference (on `scheduler`, whatever `schedulers` lists); labelled by the pair."""
    report, out = study(pack, sd15, conds, "euler,dpm_2", "2,3", reference_steps=6,
                        schedulers="karras, exponential")
    pairs = [(s, c) for s in ("euler", "dpm_2") for c in ("karras", "exponential")]
    assert [(r["sampler"], r["scheduler"], r["steps"]) for r in report["rows"]] == [
        (s, c, n) for s, c in pairs for n in (2, 3)]
    assert [r["label"] for r in report["rows"]] == [f"{s} + {c}" for s, c in pairs
                                                    for _ in (2, 3)]
    assert report["settings"]["schedulers"] == ["karras", "exponential"]
    assert report["reference"]["scheduler"] == "karras"

    reference = ksampler(sd15[0], conds, "dpmpp_2m", "karras", 6)
    for row in report["rows"]:
        direct = ksampler(sd15[0], conds, row["sampler"], row["scheduler"], row["steps"])
        assert row["error"] == pytest.approx(
            float((direct - reference).pow(2).mean().sqrt()), rel=1e-5, abs=1e-6), row
    errors = {(r["label"], r["steps"]): r["error"] for r in report["rows"]}
    assert errors[("euler + karras", 3)] != errors[("euler + exponential", 3)]
    # dpm_2 at 3 steps: KSampler's discard rule on either scheduler, 2N-1 calls
    assert {r["nfe"] for r in report["rows"] if r["sampler"] == "dpm_2" and r["steps"] == 3} \
        == {5}

    # The plot draws a line per pair, the grid a row per pair (and the reference).
    plot, grid = out.args[1], out.args[2]
    assert plot.shape == (1, 512, 768, 3)
    cell = pack.nodes.lab_report.cell_size((64, 64))
    assert grid.shape[1] > 4 * cell[1] and grid.shape[2] > 3 * cell[0]
    table = pack.nodes.lab_report.format_table(report)
    assert "euler + exponential" in table and "dpm_2 + karras" in table


def test_the_best_pair_at_each_nfe_is_highlighted(pack, sd15, conds):
    report, _ = study(pack, sd15, conds, "euler,heun,dpmpp_2m", "2,3", reference_steps=6,
                      schedulers="karras,exponential")
    rows = report["rows"]
    assert len(rows) == 3 * 2 * 2
    for nfe in {r["nfe"] for r in rows}:
        at_nfe = [r for r in rows if r["nfe"] == nfe]
        lowest = min(r["error"] for r in at_nfe)
        fewer = [r["error"] for r in rows if r["nfe"] < nfe]
        # the lowest error at this many calls is highlighted unless fewer calls do better
        assert [r["best"] for r in at_nfe] == [
            r["error"] == lowest and not any(e <= lowest for e in fewer) for r in at_nfe], nfe
    best = [r for r in rows if r["best"]]
    assert best and min(rows, key=lambda r: (r["nfe"], r["error"])) in best
    assert len({r["nfe"] for r in best}) == len(best)  # one pair per NFE (no exact ties here)


def test_a_workflow_saved_without_schedulers_runs_as_before(pack, sd15, conds):
    """No `schedulers` input (a saved workflow), an empty one, and the `scheduler` listed
    alone: the same rows, named by their sampler, all on `scheduler`."""
    old, _ = study(pack, sd15, conds, "euler,heun", "2,3", reference_steps=6)
    assert [(r["label"], r["sampler"], r["scheduler"], r["steps"]) for r in old["rows"]] == [
        (s, s, "karras", n) for s in ("euler", "heun") for n in (2, 3)]
    assert old["settings"]["schedulers"] == ["karras"]
    for schedulers in ("", "karras"):
        again, _ = study(pack, sd15, conds, "euler,heun", "2,3", reference_steps=6,
                         schedulers=schedulers)
        assert without_seconds(again) == without_seconds(old), schedulers
    # with several schedulers, the `scheduler`'s rows are those rows (same reference, noise)
    pairs, _ = study(pack, sd15, conds, "euler,heun", "2,3", reference_steps=6,
                     schedulers="exponential,karras")
    karras = [{k: v for k, v in row.items() if k not in ("seconds", "label", "best")}
              for row in pairs["rows"] if row["scheduler"] == "karras"]
    assert karras == [{k: v for k, v in row.items() if k not in ("seconds", "label", "best")}
                      for row in old["rows"]]
    assert pairs["reference"] == {**old["reference"], "seconds": pairs["reference"]["seconds"]}


# A small fit (seconds on the CPU), as tests/nodes/test_calibrate_node.py runs it: the Lab's
# plumbing, not the fit's quality.
FAST_CALIBRATION = {"base": "auto", "history": 1, "move_timesteps": True, "heldout": 0.25,
                    "iterations": 1, "regularization": 1e-3, "trajectory": 1.0,
                    "reference_steps": 4}


@pytest.fixture
def small_calibration(pack, tmp_path, monkeypatch):
    """lml_calibrated fitted on 4 noises with FAST_CALIBRATION, cached in a fresh user folder."""
    import folder_paths

    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    monkeypatch.setattr(pack.nodes.lab_node, "CALIBRATION_SAMPLES", 4)
    monkeypatch.setattr(pack.nodes.lab_node, "CALIBRATION_OPTIONS", FAST_CALIBRATION)
    yield
    folder_paths.set_user_directory(old)


def test_lml_calibrated_is_one_row_per_step_count_fitted_from_the_labs_pairs(
        pack, sd15, conds, small_calibration):
    """With schedulers, lml_calibrated calibrates once per step count, starting from the
    study's schedulers x samplers (here not the node's `scheduler`, karras: so what it compared
    can only come from the Lab's list), and competes for the highlight like any pair."""
    report, _ = study(pack, sd15, conds, "euler,dpmpp_2m,lml_calibrated", "3",
                      schedulers="simple,exponential")
    rows = report["rows"]
    assert [r["label"] for r in rows] == [
        "euler + simple", "euler + exponential", "dpmpp_2m + simple", "dpmpp_2m + exponential",
        "lml_calibrated (best of the pairs)"]
    calibrated = rows[-1]
    assert calibrated["sampler"] == "lml_calibrated" and calibrated["scheduler"] is None
    assert calibrated["nfe"] == 3 and calibrated["error"] > 0
    assert calibrated["calibration_evaluations"] > 0
    compared = calibrated["calibration_compared"]
    pairs = [label.split(" + ") for label in compared]
    assert {schedule for _, schedule in pairs} <= {"simple", "exponential"}, compared
    assert {name for name, _ in pairs if not name.startswith("lml(")} & {"euler", "dpmpp_2m"}, \
        compared  # the Lab's samplers were measured too
    assert isinstance(calibrated["calibration_chosen"], str)
    # every row has 3 model calls: the lowest error of all five is the one highlighted
    assert [r["best"] for r in rows] == [r["error"] == min(x["error"] for x in rows)
                                         for r in rows]
