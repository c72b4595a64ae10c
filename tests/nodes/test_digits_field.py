"""harness.digits_field's core on one step count at tiny sizes (the digits checkpoint, a few
samplers and schedulers, 3 test noises with a screen on 2, a short LML Calibrate): the table's
structure, equal counted model calls, and AYS/GITS sigmas that are the host nodes' own."""

import pytest
from comfy_extras.nodes_align_your_steps import AlignYourStepsScheduler
from comfy_extras.nodes_gits import GITSScheduler

from harness import digits_field

NFE = 4
SAMPLERS = ["euler", "heun", "ipndm_v"]
SCHEDULERS = ["karras", "simple"]
TINY = {"iterations": 1, "history": 1, "reference_steps": 4}


def gits_default():
    return next(i.default for i in GITSScheduler.define_schema().inputs if i.id == "coeff")


@pytest.fixture(scope="module")
def measured(pack, digits_sd15):
    model, clip, _ = digits_sd15
    used = []  # (sampler, sigmas) of every SamplerCustom run
    original = digits_field.Bench.sampler_custom

    def recording(self, sampler, sigmas):
        used.append(sigmas.clone())
        return original(self, sampler, sigmas)

    digits_field.Bench.sampler_custom = recording
    try:
        result = digits_field.measure(
            pack, model, clip, steps_list=[NFE], noises=3, screen=2, keep=2, reference_steps=8,
            samples=4, options=TINY, samplers=SAMPLERS, schedulers=SCHEDULERS, log=lambda _: None)
    finally:
        digits_field.Bench.sampler_custom = original
    return result, used


def test_one_step_count_gives_the_table_line(measured):
    result, _ = measured
    assert result["complete"] and list(result["steps"]) == [str(NFE)]
    line = result["steps"][str(NFE)]
    rows = line["rows"]
    labels = [*SCHEDULERS, digits_field.AYS, f"{digits_field.GITS} (coeff {gits_default():g})"]
    assert sorted((r["sampler"], r["schedule"]) for r in rows) == sorted(
        (s, label) for s in SAMPLERS for label in labels)
    for row in rows:  # every pair screened within the budget; heun takes 2 steps (3 calls)
        assert not row.get("failed"), row
        assert row["screen_nfe"] <= NFE and row["steps"] == (2 if row["sampler"] == "heun" else 4)
    final = [r for r in rows if r["rms"] is not None]
    assert 2 <= len(final) < len(rows) and all(r["nfe"] <= NFE for r in final)
    best = min(final, key=lambda r: r["rms"])
    assert line["best_pair"] == {"pair": f"{best['sampler']} + {best['schedule']}",
                                 "rms": best["rms"], "nfe": best["nfe"]}
    assert line["best_karras"]["pair"].endswith("+ karras")
    assert line["best_node_schedule_pair"]["pair"].split(" + ")[1] in labels[2:]
    calibrated = line["calibrated"]
    assert calibrated["nfe"] == NFE and calibrated["rms"] > 0
    assert calibrated["model_evaluations"] > 0 and calibrated["seconds"] > 0
    assert calibrated["chosen"] in calibrated["candidates"]
    assert line["ratio"] == pytest.approx(calibrated["rms"] / best["rms"])
    assert result["reference"]["steps"] == 8 and result["reference"]["nfe"] == 8


def test_ays_and_gits_sigmas_are_the_host_nodes_own(measured):
    result, used = measured
    schedules = result["steps"][str(NFE)]["node_schedules"]
    gits = f"{digits_field.GITS} (coeff {gits_default():g})"
    for steps in (2, 4):  # heun's 2 steps, the others' 4
        ays = AlignYourStepsScheduler.execute(model_type="SD1", steps=steps, denoise=1.0)
        gits_sigmas = GITSScheduler.execute(coeff=gits_default(), steps=steps, denoise=1.0)
        assert schedules[digits_field.AYS][steps] == ays.result[0].tolist()
        assert schedules[gits][steps] == gits_sigmas.result[0].tolist()
    # What the SamplerCustom runs got: exactly those sigmas, each for every sampler.
    host = {tuple(s) for per in schedules.values() for s in per.values()}
    assert {tuple(s.tolist()) for s in used} == host
    screen, finalists = 2 * len(SAMPLERS), sum(
        1 for r in result["steps"][str(NFE)]["rows"]
        if r["rms"] is not None and r["schedule"] not in SCHEDULERS)
    assert len(used) == screen + finalists


def test_steps_fit_the_budget_on_the_sigmas_ksampler_gives(pack, digits_sd15):
    model = digits_sd15[0]
    sigmas = pack.nodes.bridge.ksampler_sigmas
    assert len(sigmas(model, 6, "euler", "ddim_uniform")) == 8  # 7 steps for 6
    assert digits_field.ksampler_steps(pack, model, "euler", "ddim_uniform", 6) == 5
    assert digits_field.ksampler_steps(pack, model, "euler", "karras", 6) == 6
    assert digits_field.ksampler_steps(pack, model, "heun", "karras", 6) == 3
    for name in ("euler", "uni_pc", "dpm_2", "heunpp2"):
        for nfe in (4, 5, 6, 8, 10):
            steps = digits_field.ksampler_steps(pack, model, name, "ddim_uniform", nfe)
            calls = pack.lml_core.expected_nfe(name, len(sigmas(model, steps, name,
                                                                "ddim_uniform")) - 1)
            more = pack.lml_core.expected_nfe(name, len(sigmas(model, steps + 1, name,
                                                               "ddim_uniform")) - 1)
            assert calls <= nfe < more, (name, nfe, steps)


def test_the_report_quotes_the_result(measured):
    result, _ = measured
    line = result["steps"][str(NFE)]
    text = digits_field.markdown(result)
    row = next(t for t in text.splitlines() if t.startswith(f"| {NFE} |"))
    assert line["best_pair"]["pair"] in row and f"{line['ratio']:.3f}" in row
    assert line["calibrated"]["chosen"] in row
    assert "| steps (NFE) | best pair (RMS) | best AYS/GITS pair (RMS) |" in text
    assert ("nowhere in this run" in text) == (line["ratio"] <= 1)


def test_a_loss_is_named_with_its_ratio():
    line = {"ratio": 1.25, "calibrated": {"rms": 0.5},
            "best_pair": {"pair": "deis + karras", "rms": 0.4}}
    won = {**line, "ratio": 0.8}
    assert digits_field.losses({"steps": {"4": won, "6": line}}) == [
        "6 steps: calibrated 0.5 vs deis + karras 0.4, 1.250x (+25.0% error)"]
