"""LML Calibrate and Sampler LML Calibrated in-process: the fit through ComfyUI's own sampling
path on the test checkpoint, the SAMPLER it returns, the saved text reproducing it, the errors,
the on-disk cache and Cancel."""

import json
import math
import re

import comfy.model_management
import comfy.sample
import comfy.samplers
import pytest
import torch

from lml_core import Calibration, calibrations_from_json
from lml_core.calibration_text import SIGMA_RTOL

# A small fit (seconds on the CPU): the node's plumbing, not the fit's quality (lml_core's
# tests and the benchmark measure that).
FAST = {"base": "auto", "history": 1, "move_timesteps": True, "heldout": 0.25,
        "iterations": 1, "regularization": 1e-3, "trajectory": 1.0, "reference_steps": 4,
        "field": "this scheduler"}  # the LML fit alone: the field has its own test


# The module's calibration: a seed whose fit gains on its held-out noise (one LM step kept), so
# that the fitted numbers tests compare are not the base's.
SEED = 10


@pytest.fixture(scope="module")
def calibrated(pack, sd15, conds, user_dir):
    return calibrate_node(pack, sd15, conds, seed=SEED)


def node(pack, name):
    return pack.nodes.NODES_BY_ID[name]


def calibrate_node(pack, sd15, conds, seed=5, steps=3, samples=4, cfg=4.0, scheduler="karras",
                   **changes):
    latent = {"samples": torch.zeros([1, 4, 8, 8])}
    out = node(pack, "LMLCalibrate").execute(
        model=sd15[0], positive=conds[0], negative=conds[1], latent_image=latent, seed=seed,
        cfg=cfg, scheduler=scheduler, steps=steps, samples=samples, **{**FAST, **changes})
    return out


def schedule(sd15, scheduler, steps):
    model_sampling = sd15[0].get_model_object("model_sampling")
    return [float(s) for s in comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps)]


def test_calibrate_outputs_a_sampler_its_text_and_a_report(pack, sd15, sample_custom,
                                                            calibrated):
    out = calibrated
    sampler, text, report = out.result
    calibration = Calibration.from_json(text)
    assert calibration.fitted_on["steps"] == 3 and calibration.fitted_on["model_kind"] == "eps"
    assert calibration.fitted_on["scheduler"] == "karras"
    assert calibration.fitted_on["sigmas"] == schedule(sd15, "karras", 3)
    assert calibration.fitted_on["latent_shape"] == [4, 8, 8]
    assert out.ui["lml_calibration"] == [text]
    assert "held-out error" in report and "model calls" in report
    assert "test error (1 noise that neither fitted nor chose" in report
    assert f"{calibration.report['test_rms']:.4g}" in report
    assert calibration.report["model_calls"] > 0
    first = sample_custom(sampler, 3)
    assert torch.isfinite(first).all()
    # The text in a new Sampler LML Calibrated reproduces the samples bit for bit.
    again = node(pack, "SamplerLMLCalibrated").execute(calibration=text).result[0]
    assert torch.equal(sample_custom(again, 3), first)
    # Another step count is refused, naming both.
    with pytest.raises(ValueError, match=r"fitted for 3 steps.*given 5 steps"):
        sample_custom(again, 5)


def test_same_inputs_load_from_the_disk_cache(pack, sd15, conds, user_dir, calibrated):
    first = calibrated.result
    assert len(list((user_dir / "lml_calibrations").glob("*.json"))) == 1
    second = calibrate_node(pack, sd15, conds, seed=SEED).result
    assert second[1] == first[1] and "loaded from the cache" in second[2]
    third = calibrate_node(pack, sd15, conds, seed=22).result  # another seed: another fit
    assert "loaded from the cache" not in third[2]
    assert len(list((user_dir / "lml_calibrations").glob("*.json"))) == 2


@pytest.mark.parametrize("text, message", [
    ("", "calibration: the text is empty"),
    ("{}", "missing field"),
    (json.dumps({"format": "lml-calibration/2", "base": "euler", "sigmas": [2.0, 1.0, 0.0],
                 "corrections": [[0.0]], "fitted_on": {"steps": 2}}), "must be 2 rows"),
    (json.dumps({"format": "lml-calibration/2", "base": "euler", "sigmas": [2.0, 1.0, 0.0],
                 "corrections": [[0.0], [0.0]], "fitted_on": {"steps": 2}}),
     "calibration: fitted_on.sigma_max is missing"),
])
def test_malformed_text_is_refused_at_validation(pack, text, message):
    result = node(pack, "SamplerLMLCalibrated").validate_inputs(calibration=text)
    assert isinstance(result, str) and message in result
    with pytest.raises(ValueError, match=message):
        node(pack, "SamplerLMLCalibrated").execute(calibration=text)


# The sweep's fits: iterations 0, one base, cfg 1 (one UNet pass per call) and the smallest
# inputs the node takes (4 noises, 4 reference steps, an 8x8 latent): ~10 s each on one thread.
SWEEP = {**FAST, "base": "euler", "iterations": 0}
SCHEDULERS = comfy.samplers.KSampler.SCHEDULERS


def same_schedule(a, b):
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=SIGMA_RTOL) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def sweep_fits():
    """(scheduler, steps) -> LML Calibrate's outputs, for the first scheduler of each schedule."""
    return {}


@pytest.mark.parametrize("scheduler, steps", [
    (name, steps) for steps in (1, 2) for name in SCHEDULERS if (name, steps) != ("kl_optimal", 1)])
def test_every_scheduler_calibrates_and_refuses_another_schedule(
        pack, sd15, conds, user_dir, sample_custom, sweep_fits, scheduler, steps):
    """LML Calibrate at 1 and 2 steps on each built-in scheduler: the calibration records the
    scheduler and its sigmas, samples on that schedule, and refuses one whose sigmas differ,
    naming the scheduler it was fitted on.  Schedulers with the same sigmas (karras,
    exponential, normal and kl_optimal at 2 steps; seven of them at 1 step) share one fit: the
    node's inputs differ only in the scheduler's name."""
    sigmas = schedule(sd15, scheduler, steps)
    first = next(name for name in SCHEDULERS if same_schedule(schedule(sd15, name, steps), sigmas))
    if (first, steps) not in sweep_fits:
        sweep_fits[first, steps] = calibrate_node(pack, sd15, conds, seed=41, steps=steps,
                                                  cfg=1.0, scheduler=first, **SWEEP).result
    sampler, text, report = sweep_fits[first, steps]
    calibration = Calibration.from_json(text)
    assert calibration.fitted_on["scheduler"] == first and f"({first}," in report
    assert same_schedule(calibration.fitted_on["sigmas"], sigmas)
    assert calibration.report["iterations"] == 0 and calibration.steps == steps
    assert torch.isfinite(sample_custom(sampler, steps, scheduler=scheduler)).all()
    other = next(name for name in SCHEDULERS
                 if not same_schedule(schedule(sd15, name, steps), sigmas))
    with pytest.raises(ValueError, match=f"fitted for {steps} steps of the {first} schedule"):
        sample_custom(sampler, steps, scheduler=other)


def test_a_schedule_that_cannot_be_calibrated_names_the_scheduler(pack, sd15, conds, user_dir):
    """kl_optimal at 1 step gives [nan, 0]: refused before the fit, naming the scheduler."""
    assert math.isnan(schedule(sd15, "kl_optimal", 1)[0])
    with pytest.raises(ValueError, match=r"the kl_optimal scheduler gives \[nan, 0\] for 1 "
                                         r"step\(s\), not sigmas that decrease strictly to 0"):
        calibrate_node(pack, sd15, conds, steps=1, cfg=1.0, scheduler="kl_optimal", **SWEEP)


def test_cancel_stops_the_calibration(pack, sd15, conds, user_dir, calibrated):
    model = sd15[0].clone()
    calls = []

    def interrupt_at_fifth_call(apply_model, args):
        calls.append(1)
        if len(calls) == 5:
            comfy.model_management.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(interrupt_at_fifth_call)
    before = sorted((user_dir / "lml_calibrations").glob("*.json"))
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        calibrate_node(pack, (model, *sd15[1:]), conds, seed=31)
    assert not comfy.model_management.processing_interrupted()
    assert len(calls) < 10
    assert sorted((user_dir / "lml_calibrations").glob("*.json")) == before  # nothing cached


def test_unknown_scheduler_or_base_is_refused_before_anything_runs(pack):
    validate = node(pack, "LMLCalibrate").validate_inputs
    assert validate(scheduler="karras", base="auto") is True
    assert "scheduler must be one of" in validate(scheduler="nope", base="auto")
    assert "base must be one of" in validate(scheduler="karras", base="heun")


@pytest.mark.parametrize("change, message", [
    ({"cfg": float("nan")}, "cfg must be a number, got nan"),  # passes ComfyUI's bounds check
    ({"cfg": float("inf")}, "cfg must be between 0 and 100, got inf"),
    ({"scheduler": "nope"}, "scheduler must be one of"),
])
def test_bad_cfg_or_scheduler_is_refused_naming_it_before_anything_runs(pack, sd15, conds,
                                                                       user_dir, host_call,
                                                                       change, message):
    calibrate = node(pack, "LMLCalibrate")
    inputs = {"scheduler": "karras", "base": "auto", "cfg": 4.0}
    validate = lambda **changes: host_call(calibrate, "validate_inputs", **{**inputs, **changes})
    assert validate() is True and validate(cfg=100.0) is True  # the widget's max
    assert validate(**change).startswith(message)
    model, calls = sd15[0].clone(), []
    model.set_model_unet_function_wrapper(
        lambda apply, args: calls.append(1) or apply(args["input"], args["timestep"], **args["c"]))
    with pytest.raises(ValueError, match=f"^{message}"):  # linked: refused when it runs
        host_call(calibrate, "execute", model=model, positive=conds[0], negative=conds[1],
                  latent_image={"samples": torch.zeros([1, 4, 8, 8])}, seed=5, steps=3,
                  samples=4, **{**inputs, **FAST, **change})
    assert calls == []


def test_lab_measures_the_calibrated_sampler_like_any_other_row(pack, sd15, conds, user_dir,
                                                                monkeypatch):
    """'lml_calibrated' in the Lab: fitted at each step count on noise other than the study's
    seed, then counted and scored like every row; its fitting cost is in the row."""
    lab_node = pack.nodes.lab_node
    monkeypatch.setattr(lab_node, "CALIBRATION_SAMPLES", 4)
    monkeypatch.setattr(lab_node, "CALIBRATION_OPTIONS",
                        {k: v for k, v in FAST.items() if k != "field"})
    lab = pack.nodes.NODES_BY_ID["LMLSamplerLab"]
    assert lab.validate_inputs(samplers="euler,lml_calibrated", steps="3") is True
    out = lab.execute(sd15[0], conds[0], conds[1], {"samples": torch.zeros([1, 4, 8, 8])},
                      sd15[2], 5, 4.0, "karras", "euler,lml_calibrated", "3", "dpmpp_2m", 8)
    rows = {row["sampler"]: row for row in json.loads(out.args[0])["rows"]}
    calibrated = rows["lml_calibrated"]
    assert calibrated["nfe"] == 3 and calibrated["error"] > 0
    assert calibrated["calibration_evaluations"] > 0
    assert "calibration_evaluations" not in rows["euler"]


def test_a_linear_calibration_runs_in_sampler_lml_calibrated(pack, sd15, sample_custom):
    """An "lml_linear" calibration (lml_core.linear_fit; calibrate's linear_fits) pasted into
    Sampler LML Calibrated runs its rows: euler's rows sample as the host's euler."""
    sig = schedule(sd15, "karras", 3)
    rows = [[sig[k + 1] / sig[0]] + [sig[k + 1] * (1 / sig[m + 1] - 1 / sig[m])
                                     for m in range(k + 1)] for k in range(2)]
    rows.append([0.0, 0.0, 0.0, 1.0])
    text = Calibration(base="", sigmas=sig, corrections=rows, sampler="lml_linear",
                       fitted_on={"steps": 3, "sigma_max": sig[0], "sigma_min": sig[-2],
                                  "model_kind": "eps", "sigmas": sig,
                                  "latent_shape": [4, 8, 8]}).to_json()
    sampler = node(pack, "SamplerLMLCalibrated").execute(calibration=text).result[0]
    ours = sample_custom(sampler, 3)
    euler = sample_custom(comfy.samplers.sampler_object("euler"), 3)
    assert torch.allclose(ours, euler, rtol=0, atol=1e-4 * float(euler.abs().max()))


def test_the_default_field_measures_every_pair_and_runs_what_won(pack, sd15, conds,
                                                                 sample_custom, user_dir):
    """field 'all pairs' (the default): the host's schedulers and deterministic samplers are
    measured, the best pair competes unchanged, and the SAMPLER runs whatever won."""
    sampler, text, report = calibrate_node(pack, sd15, conds, seed=31, steps=2,
                                           iterations=0, field="all pairs").result
    calibration = Calibration.from_json(text)
    candidates = calibration.report["candidates"]
    assert any(" + " in label and not label.startswith(("lml(", "calibrated"))
               for label in candidates), candidates
    assert calibration.report["chosen"] in candidates and "chosen:" in report
    assert torch.isfinite(sample_custom(sampler, 2)).all()


def test_several_step_counts_in_one_run_share_the_noises_and_the_reference(
        pack, sd15, conds, user_dir, sample_custom, calibrated):
    """steps "3,2": one fit per step count from the same noises, the reference computed once;
    the 3-step fit is the one LML Calibrate makes for 3 steps alone (the ``calibrated``
    fixture: same seed and settings) with the reference's model calls fewer; the SAMPLER and
    the text run the fit of the schedule they are given and refuse another step count, naming
    the ones there are; the same inputs load from the cache."""
    before = len(list((user_dir / "lml_calibrations").glob("*.json")))
    sampler, text, report = calibrate_node(pack, sd15, conds, seed=SEED, steps="3,2").result
    two, three = calibrations_from_json(text)
    assert json.loads(text)["format"] == "lml-calibration-set/1"
    assert (two.steps, three.steps) == (2, 3)
    assert two.fitted_on["sigmas"] == schedule(sd15, "karras", 2)
    alone = Calibration.from_json(calibrated.result[1])
    assert (three.sigmas, three.corrections) == (alone.sigmas, alone.corrections)
    assert three.report["heldout_rms"] == alone.report["heldout_rms"]
    reference_calls = FAST["reference_steps"] + 1  # a call a step + denoising, all the noise
    assert three.report["model_calls"] == alone.report["model_calls"] - reference_calls
    assert three.report["reference_shared_from"] == 2
    assert "reference_shared_from" not in two.report
    assert report.startswith("LML Calibrate: 2 and 3 steps, one calibration each")
    assert "LML Calibrate: 2 steps (karras" in report and "LML Calibrate: 3 steps (karras" in report
    assert "reference: shared with the 2-step fit" in report
    # The SAMPLER at each step count: at 3 steps the 3-step fit alone's samples, bit for bit.
    assert torch.equal(sample_custom(sampler, 3), sample_custom(calibrated.result[0], 3))
    assert torch.isfinite(sample_custom(sampler, 2)).all()
    saved = node(pack, "SamplerLMLCalibrated")
    assert saved.validate_inputs(calibration=text) is True
    again = saved.execute(calibration=text).result[0]
    assert torch.equal(sample_custom(again, 2), sample_custom(sampler, 2))
    for each in (sampler, again):
        with pytest.raises(ValueError, match=r"^calibration: fitted for 2 and 3 steps of the "
                                             r"karras schedule, got 5 steps"):
            sample_custom(each, 5)
    # A set is refused by a node that reads one calibration, saying what it is.
    sigmas_node = node(pack, "SigmasLMLCalibrated")
    assert "several step counts" in sigmas_node.validate_inputs(calibration=text)
    # One cache file for the run; the same inputs (in another order) load from it.
    assert len(list((user_dir / "lml_calibrations").glob("*.json"))) == before + 1
    cached = calibrate_node(pack, sd15, conds, seed=SEED, steps="2, 3").result
    assert cached[1] == text and cached[2].endswith("loaded from the cache: " + str(next(
        p for p in (user_dir / "lml_calibrations").glob("*.json")
        if p.read_text() == text)))


def test_steps_as_an_int_or_text(pack):
    counts = pack.nodes.calibrate_node.step_counts_of
    assert counts(8) == counts("8") == counts(" 8 ") == [8]  # an API prompt's int, saved before
    assert counts("8, 4,6") == [4, 6, 8]
    assert counts(",".join(str(n) for n in range(1, 17))) == list(range(1, 17))
    assert counts("100") == [100]


@pytest.mark.parametrize("steps, message", [
    ("", "steps is empty"),
    (" ", "steps is empty"),
    ("4,,8", "steps has an empty entry in '4,,8'"),
    ("4,8,", "steps has an empty entry"),
    ("0", "steps: '0' is out of range (1 to 100)"),
    ("-4", "steps: '-4' is out of range (1 to 100)"),
    ("101", "steps: '101' is out of range (1 to 100)"),
    ("4,4", "steps: 4 is given twice"),
    ("abc", "steps: 'abc' is not a whole number"),
    ("8.0", "steps: '8.0' is not a whole number"),
    ("4 8", "steps: '4 8' is not a whole number"),
    (",".join(str(n) for n in range(1, 18)), "steps: at most 16 step counts, got 17"),
    (0, "steps: '0' is out of range"),
    (1.5, "steps must be one step count or several separated by commas"),
])
def test_bad_steps_are_refused_naming_steps_before_anything_runs(pack, sd15, conds, user_dir,
                                                                 host_call, steps, message):
    calibrate = node(pack, "LMLCalibrate")
    inputs = {"scheduler": "karras", "base": "auto", "cfg": 4.0}
    assert host_call(calibrate, "validate_inputs", **inputs, steps="4,8") is True
    assert host_call(calibrate, "validate_inputs", **inputs, steps=steps).startswith(message)
    model, calls = sd15[0].clone(), []
    model.set_model_unet_function_wrapper(
        lambda apply, args: calls.append(1) or apply(args["input"], args["timestep"], **args["c"]))
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):  # linked: refused at run
        host_call(calibrate, "execute", model=model, positive=conds[0], negative=conds[1],
                  latent_image={"samples": torch.zeros([1, 4, 8, 8])}, seed=5, steps=steps,
                  samples=4, **{**inputs, **FAST})
    assert calls == []


# --------------------------------------------------------------------------------------------
# GPU memory: the calibration's model calls are as large as ComfyUI's model management says fit

def fitted_numbers(text):
    calibration = json.loads(text)
    return calibration["sigmas"], calibration["corrections"]


def test_auto_batch_size_is_the_most_noises_model_management_says_fit(pack, monkeypatch):
    """memory_required of n noises x the latents per noise, x 1.5 (ComfyUI's calc_cond_batch
    margin), below get_free_memory on the noise's device: at least 1, at most all."""
    bridge = pack.nodes.bridge
    asked = []

    class BaseModel:
        def memory_required(self, input_shape):
            asked.append(list(input_shape))
            return input_shape[0] * 2**30  # 1 GiB per latent

    x = torch.zeros([8, 4, 16, 16])
    for free, per_noise, rows in ((10, 2, 3), (9, 2, 2), (10, 1, 6), (100, 2, 8), (1, 2, 1)):
        monkeypatch.setattr(comfy.model_management, "get_free_memory",
                            lambda dev=None, torch_free_too=False, free=free: free * 2**30)
        size, why = bridge.auto_batch_size(BaseModel(), x, per_noise)
        assert size == rows, (free, per_noise)
        if free > 1:
            assert why == f"auto: {rows} of 8 noises fit in {free} GiB free"
    assert why == "auto: 1 noise per call (3 GiB estimated with the margin, 1 GiB free)"
    assert all(shape[1:] == [4, 16, 16] and shape[0] % 2 == 0 for shape in asked[-4:])
    assert bridge.latents_per_noise(4.0) == 2 and bridge.latents_per_noise(1.0) == 1
    assert bridge.latents_per_noise(1.0, {"disable_cfg1_optimization": True}) == 2


def test_model_calls_fit_the_free_memory_and_the_calibration_is_the_same(
        pack, sd15, conds, little_memory, user_folder, counting, calibrated):
    """The module's calibration (4 noises: 2 fit, 1 chooses, 1 tests; cfg 4) again where model
    management says 2 noises fit (2 x 2 latents x 1.5 = 6 < 7 TiB free < 9): no UNet call gets
    more than 4 latents (the whole fit's reference got 8), the same evaluations are made, and
    the fitted sigmas and corrections are the same to float32 rounding: the UNet's float32
    output for a noise changes by ~3e-6 relative with the batch it is in (the CPU kernels differ
    by batch size; measured on this checkpoint at 3 vs 2 + 1 rows), which the fit's finite
    differences (step 1e-2) and its LM step turn into ~1e-4 in the fitted numbers.  Rows mixed
    up or lost would move the reference and the rollouts by whole units."""
    _, whole, whole_report = calibrated.result
    # The one-iteration fit on 2 noises of this random-weight UNet may keep the base (seen on
    # an H200 in float16, and on CPU with a host rebuilt on 2026-12-04: no LM step lowered the
    # objective): then the numbers compared below are the base's, and the evaluations, the
    # batch sizes and the held-out error still show rows mixed up or lost.
    assert "batch: 4 noises per model call (auto: 4 of 4 noises fit in" in whole_report
    # The cache does not key on batch_size: the calibration does not depend on it.
    again = calibrate_node(pack, sd15, conds, seed=SEED, batch_size=1).result
    assert "loaded from the cache" in again[2] and again[1] == whole

    little_memory(7)
    user_folder("chunked")
    model, seen = counting(sd15[0])
    _, text, report = calibrate_node(pack, (model, *sd15[1:]), conds, seed=SEED).result
    assert "loaded from the cache" not in report
    fit = json.loads(text)["report"]
    assert max(seen) == 4 and sum(seen) == 2 * fit["model_evaluations"]
    assert fit["model_evaluations"] == json.loads(whole)["report"]["model_evaluations"]
    assert fit["model_calls"] > json.loads(whole)["report"]["model_calls"]
    assert fit["batch"] == {"size": 2, "why": "auto: 2 of 4 noises fit in 7.17e+03 GiB free"}
    assert "batch: 2 noises per model call (auto: 2 of 4 noises fit in 7.17e+03 GiB free)" in (
        report)
    (sigmas, corrections), (whole_sigmas, whole_corrections) = (fitted_numbers(text),
                                                                fitted_numbers(whole))
    assert sigmas == pytest.approx(whole_sigmas, rel=1e-3)
    assert sum(corrections, []) == pytest.approx(sum(whole_corrections, []), rel=1e-3, abs=1e-4)
    assert fit["heldout_rms"] == pytest.approx(json.loads(whole)["report"]["heldout_rms"],
                                               rel=1e-3)


@pytest.mark.parametrize("node_id", ["LMLCalibrate", "LMLCalibrateSigmas"])
@pytest.mark.parametrize("value", [-1, 2.5, 1025, float("nan")])
def test_a_bad_batch_size_is_refused_naming_it(pack, sd15, conds, host_call, counting, node_id,
                                              value):
    calibrating = node(pack, node_id)
    inputs = {"scheduler": "karras", "cfg": 4.0}
    assert host_call(calibrating, "validate_inputs", **inputs, batch_size=0) is True
    assert host_call(calibrating, "validate_inputs", **inputs, batch_size=1024) is True
    message = host_call(calibrating, "validate_inputs", **inputs, batch_size=value)
    assert message.startswith("batch_size must be a whole number from 0 (auto) to 1024, got ")
    model, seen = counting(sd15[0])
    settings = FAST if node_id == "LMLCalibrate" else {
        k: FAST[k] for k in ("heldout", "iterations", "regularization", "reference_steps")}
    names = {"sampler_name": "dpmpp_2m"} if node_id == "LMLCalibrateSigmas" else {}
    with pytest.raises(ValueError, match="^batch_size must be a whole number"):  # linked
        host_call(calibrating, "execute", model=model, positive=conds[0], negative=conds[1],
                  latent_image={"samples": torch.zeros([1, 4, 8, 8])}, seed=5, steps=3,
                  samples=4, **inputs, **names, **settings, batch_size=value)
    assert seen == []


def test_the_fit_follows_the_precision_the_model_computes_in(pack, sd15, calibrated,
                                                             monkeypatch):
    """The finite-difference step follows the UNet's compute dtype (bridge.compute_dtype: the
    host's manual_cast_dtype where set, else the weights'), not the float32 latent the sampler
    gets: float32 on this CPU, recorded in the report's options; a cast model is read as its
    cast."""
    bridge, base = pack.nodes.bridge, sd15[0].model
    assert bridge.compute_dtype(base) == base.get_dtype() == torch.float32
    assert json.loads(calibrated.result[1])["report"]["options"]["model_dtype"] == "float32"
    monkeypatch.setattr(base, "manual_cast_dtype", torch.bfloat16)
    assert bridge.compute_dtype(base) == torch.bfloat16


def test_jacobian_rows_reaches_the_fit_and_its_cache_key_only_when_changed(
        pack, sd15, conds, calibrated):
    """The module's calibration ran without jacobian_rows: the same inputs with the default 4
    load it from the cache (the key it always had); 0 (every fitting noise) is another
    calibration, whose report records it; a bad value is refused naming jacobian_rows."""
    _, text, _ = calibrated.result
    assert json.loads(text)["report"]["options"]["jacobian_rows"] == 4
    default = calibrate_node(pack, sd15, conds, seed=SEED, jacobian_rows=4).result
    assert "loaded from the cache" in default[2] and default[1] == text
    every = calibrate_node(pack, sd15, conds, seed=SEED, jacobian_rows=0).result
    assert "loaded from the cache" not in every[2]
    assert json.loads(every[1])["report"]["options"]["jacobian_rows"] == 0
    calibrating = node(pack, "LMLCalibrate")
    for value in (-1, 2.5, 1025, float("nan")):
        message = calibrating.validate_inputs(scheduler="karras", cfg=4.0, jacobian_rows=value)
        assert message.startswith("jacobian_rows must be a whole number from 0 (all) to 1024")
        with pytest.raises(ValueError, match="^jacobian_rows must be a whole number"):  # linked
            calibrate_node(pack, sd15, conds, seed=SEED, jacobian_rows=value)


def test_linear_fits_reaches_the_fit_and_its_cache_key_only_when_off(pack, sd15, conds,
                                                                      calibrated):
    """linear_fits on (the default) loads the module's calibration from the cache; off enters
    the key.  Without the built-ins' starts (field 'this scheduler') it changes no fit: off
    fits the same calibration, recorded as off.  With them, on fits a built-in sampler's
    exact steps (an lml_linear calibration wins here), off never runs that fit.
    A non-boolean is refused naming linear_fits."""
    _, text, _ = calibrated.result
    assert json.loads(text)["report"]["options"]["linear_fits"] is True
    on = calibrate_node(pack, sd15, conds, seed=SEED, linear_fits=True).result
    assert "loaded from the cache" in on[2] and on[1] == text
    off = calibrate_node(pack, sd15, conds, seed=SEED, linear_fits=False).result
    assert "loaded from the cache" not in off[2]
    fitted, plain = Calibration.from_json(text), Calibration.from_json(off[1])
    assert plain.report["options"]["linear_fits"] is False
    assert (plain.sampler, plain.sigmas, plain.corrections) == (
        fitted.sampler, fitted.sigmas, fitted.corrections)
    every = {"seed": 31, "steps": 2, "iterations": 1, "field": "all pairs"}
    linear = Calibration.from_json(calibrate_node(pack, sd15, conds, **every).result[1])
    assert linear.report["options"]["linear_fits"] is True
    from_builtins = [label for label in linear.report["fitted_from"]["lml"]
                     if not label.startswith(tuple(f"lml({b})" for b in ("euler", "ipndm",
                                                                            "ipndm_v")))]
    assert linear.report["chosen"] == f"calibrated {from_builtins[0]}", linear.report
    assert linear.sampler == "lml_linear"  # that sampler's exact steps, fitted
    projected = Calibration.from_json(calibrate_node(pack, sd15, conds, linear_fits=False,
                                                     **every).result[1])
    assert projected.report["options"]["linear_fits"] is False
    assert projected.sampler != "lml_linear"
    calibrating = node(pack, "LMLCalibrate")
    for value in (1, "true"):
        message = calibrating.validate_inputs(scheduler="karras", cfg=4.0, linear_fits=value)
        assert message == f"linear_fits must be true or false, got {value!r}"
        with pytest.raises(ValueError, match="^linear_fits must be true or false"):  # linked
            calibrate_node(pack, sd15, conds, seed=SEED, linear_fits=value)
    for changes in ({"field": "this scheduler"}, {"base": "euler", "field": "all pairs"}):
        assert calibrating.validate_inputs(scheduler="karras", cfg=4.0, linear_fits=True,
                                           **changes) is True, changes
