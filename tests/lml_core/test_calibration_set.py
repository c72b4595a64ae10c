"""Several step counts: the set text (lml-calibration-set/1) and its checks, the sampler picking
the calibration of its schedule's step count (and naming the ones there are when none fits),
and calibrate_steps fitting each step count as calibrate does with the reference computed once."""

import json
from dataclasses import asdict

import pytest
import torch
from hostile_calibrations import good

from lml_core import (
    Calibration,
    calibrate,
    calibrate_steps,
    calibrations_from_json,
    calibrations_to_json,
    pick_calibration,
    sample_lml_calibrated,
)
from lml_core.calibrate_steps import SharedReferences
from lml_core.calibration_text import MAX_SET, SET_FORMAT

from exact_model import MixtureDenoiser, karras_sigmas

DIM = 8


def zero(steps, scheduler="karras", base="ipndm_v"):
    """A zero-correction format-2 calibration of ``steps`` Karras steps."""
    sig = karras_sigmas(steps).tolist()
    return Calibration(base=base, sigmas=sig,
                       corrections=[[0.0] * min(i + 1, 3) for i in range(steps)],
                       fitted_on={"steps": steps, "sigma_max": sig[0], "sigma_min": sig[-2],
                                  "model_kind": "eps", "sigmas": sig, "latent_shape": [DIM],
                                  "scheduler": scheduler})


def set_text(*entries, **fields) -> str:
    return json.dumps({"format": SET_FORMAT, "calibrations": list(entries), **fields})


def test_one_calibration_is_written_as_its_format_2_text_and_several_as_a_set():
    four, eight = zero(4), zero(8, base="euler")
    assert calibrations_to_json(four) == four.to_json()
    assert calibrations_to_json([four]) == four.to_json()
    assert calibrations_from_json(four.to_json()) == [four]
    text = calibrations_to_json([eight, four])  # written by step count
    data = json.loads(text)
    assert data["format"] == SET_FORMAT and [c["fitted_on"]["steps"] for c in
                                             data["calibrations"]] == [4, 8]
    assert calibrations_from_json(text) == [four, eight]  # exactly: floats as repr
    # A single calibration's reader says what a set is instead of "missing field(s)".
    with pytest.raises(ValueError, match=r"^calibration: the text holds calibrations for "
                                         r"several step counts"):
        Calibration.from_json(text)


def test_a_format_1_text_is_a_list_of_one():
    data = good()
    data["format"] = "lml-calibration/1"
    for name in ("sigmas", "latent_shape", "scheduler"):
        del data["fitted_on"][name]
    (calibration,) = calibrations_from_json(json.dumps(data))
    assert calibration.format == "lml-calibration/1" and calibration.steps == 8


BROKEN_SETS = [
    ("no calibrations", json.dumps({"format": SET_FORMAT}), "missing field(s) ['calibrations']"),
    ("an unknown field", set_text(good(), good(), extra=1), "unknown field(s) ['extra']"),
    ("calibrations not a list", json.dumps({"format": SET_FORMAT, "calibrations": {"4": good()}}),
     "calibrations must be a list"),
    ("no calibration", set_text(), "calibrations must hold 1 to 16 calibrations (one per step "
     "count), got 0"),
    ("17 calibrations", set_text(*[good()] * (MAX_SET + 1)),
     "calibrations must hold 1 to 16 calibrations (one per step count), got 17"),
    ("an entry not an object", set_text(good(), [1]),
     "calibrations[1] must be an object (a calibration), got a list"),
    ("an entry without a field", set_text(good(), {k: v for k, v in good().items()
                                                    if k != "sigmas"}),
     "calibrations[1]: missing field(s) ['sigmas']"),
    ("an entry's fitted_on incomplete", set_text(good(), good(fitted_on={"steps": 8})),
     "calibrations[1]: fitted_on.sigma_max is missing"),
    ("an entry's correction NaN", set_text(good(corrections=[[0.0], [float("nan")]] + [[0.0]] * 6)),
     "calibrations[0]: corrections[1][0] must be a finite number"),
    ("an entry of format 1", set_text(good(format="lml-calibration/1")),
     "calibrations[0]: format must be 'lml-calibration/2' in a set, got 'lml-calibration/1'"),
    ("a set in a set", set_text(json.loads(set_text(good()))),
     "calibrations[0]: missing field(s) ['base', 'sigmas', 'corrections', 'fitted_on']"),
    ("a step count twice", set_text(good(), good(base="euler")),
     "calibrations[1] is fitted for 8 steps, as calibrations[0] is: a set holds one "
     "calibration per step count"),
]


@pytest.mark.parametrize("case, text, message", BROKEN_SETS, ids=[c for c, *_ in BROKEN_SETS])
def test_a_broken_set_is_a_value_error_naming_the_entry_and_field(case, text, message):
    with pytest.raises(Exception) as refused:
        calibrations_from_json(text)
    assert type(refused.value) is ValueError, f"{case}: {refused.value!r}"
    assert str(refused.value).startswith("calibration: ")
    assert message in str(refused.value)


def test_a_set_of_sixteen_step_counts_loads():
    entries = [asdict(zero(n)) for n in range(1, MAX_SET + 1)]
    assert [c.steps for c in calibrations_from_json(set_text(*entries))] == list(
        range(1, MAX_SET + 1))


def test_pick_calibration_runs_the_one_of_the_schedules_step_count():
    four, eight = zero(4), zero(8, base="euler")
    for given, want in ((karras_sigmas(4), four), (karras_sigmas(8), eight)):
        assert pick_calibration([eight, four], given) is want
    with pytest.raises(ValueError) as refused:
        pick_calibration([four, eight], karras_sigmas(6))
    message = str(refused.value)
    assert message.startswith("calibration: fitted for 4 and 8 steps of the karras schedule, "
                              "got 6 steps")
    assert "calibrate again with 6 among LML Calibrate's steps" in message
    # The right step count on another schedule: the entry's own message, naming both.
    other = karras_sigmas(8) * torch.tensor([1.0] + [1.01] * 8)
    with pytest.raises(ValueError, match=r"fitted for 8 steps of the karras schedule.*"
                                         r"sigma 1 differs"):
        pick_calibration([four, eight], other)
    # One calibration: the message it always gave.
    with pytest.raises(ValueError, match=r"^this calibration was fitted for 4 steps of the "
                                         r"karras schedule.*given 6 steps"):
        pick_calibration(four, karras_sigmas(6))
    with pytest.raises(ValueError, match="fitted for 4 steps, as calibrations"):
        pick_calibration([four, zero(4, base="euler")], karras_sigmas(4))
    with pytest.raises(ValueError, match="calibration must be a Calibration or a list"):
        pick_calibration([], karras_sigmas(4))


def test_the_sampler_given_a_set_samples_as_the_matching_calibration_alone():
    model = MixtureDenoiser(dim=DIM, components=3, seed=2)
    x = torch.randn(3, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    four, eight = zero(4), zero(8, base="euler")
    both = calibrations_from_json(calibrations_to_json([four, eight]))
    for steps, alone in ((4, four), (8, eight)):
        sigmas = karras_sigmas(steps).double()
        expected = sample_lml_calibrated(model, x * sigmas[0], sigmas, calibration=alone,
                                         disable=True)
        got = sample_lml_calibrated(model, x * sigmas[0], sigmas, calibration=both,
                                    disable=True)
        assert torch.equal(got, expected)
    calls = model.calls
    sigmas = karras_sigmas(6).double()
    with pytest.raises(ValueError, match="^calibration: fitted for 4 and 8 steps"):
        sample_lml_calibrated(model, x * sigmas[0], sigmas, calibration=both, disable=True)
    assert model.calls == calls  # refused before any model call
    with pytest.raises(ValueError, match="calibration must be a Calibration"):
        sample_lml_calibrated(model, x, sigmas, calibration="{}", disable=True)


# calibrate_steps: small fits of an exact-score mixture (a fraction of a second each).
SMALL = {"iterations": 2, "reference_steps": 6, "history": 2}


def noise(n=8, seed=1):
    return torch.randn(n, DIM, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed)) * 80.0


def test_calibrate_steps_fits_each_step_count_as_calibrate_with_one_reference():
    model = MixtureDenoiser(dim=DIM, components=3, spread=1.0, seed=5)
    schedules = {2: karras_sigmas(2).double(), 3: karras_sigmas(3).double()}
    alone, calls_alone = {}, {}
    for steps, sigmas in schedules.items():
        before = model.calls
        alone[steps] = calibrate(model, noise(), sigmas, **SMALL)
        calls_alone[steps] = model.calls - before
    before, lines, seen = model.calls, [], []
    both = calibrate_steps(model, noise(), {3: schedules[3], 2: schedules[2]}, log=lines.append,
                           progress=lambda done, planned: seen.append((done, planned)),
                           **SMALL)
    calls_both = model.calls - before
    # Each fit is calibrate's own (the same reference, the same numbers).
    assert [c.steps for c in both] == [2, 3]
    for calibration in both:
        expected = alone[calibration.steps]
        assert calibration.sigmas == expected.sigmas
        assert calibration.corrections == expected.corrections
        assert calibration.fitted_on == expected.fitted_on
        assert calibration.report["heldout_rms"] == expected.report["heldout_rms"]
    # The reference (a call a step and the denoising call, on all the noise at once) is
    # computed once: the second fit makes that many calls fewer.
    reference_calls = SMALL["reference_steps"] + 1
    assert calls_both == calls_alone[2] + calls_alone[3] - reference_calls
    first, second = both
    assert "reference_shared_from" not in first.report
    assert second.report["reference_shared_from"] == 2
    assert (second.report["model_calls"]
            == alone[3].report["model_calls"] - reference_calls)
    # One progress count over the whole run, and log lines naming their step count.
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == sum(c.report["model_evaluations"] for c in both)
    assert all(planned >= d for d, planned in seen)
    assert any(line.startswith("2 steps: reference") for line in lines)
    assert any(line.startswith("3 steps: ") for line in lines)


def test_shared_references_recompute_for_another_grid_or_noise():
    model = MixtureDenoiser(dim=DIM, components=3, seed=1)
    references = SharedReferences()
    x = noise(4)

    def denoise(x, sigma):
        return model(x, sigma * x.new_ones([x.shape[0]]))

    grid = [80.0, 10.0, 1.0, 0.1]
    first = references(denoise, x, grid, False)
    calls = model.calls
    again = references(denoise, x.clone(), grid, False)  # equal values: shared
    assert model.calls == calls and references.computed == 1
    assert again is not first and again.states is first.states and again.weights is None
    first.weights = torch.ones(4)  # one fit's weights never reach another's copy
    assert references(denoise, x, grid, False).weights is None
    references(denoise, x + 1, grid, False)
    references(denoise, x, [80.0, 10.0, 1.0, 0.2], False)
    assert references.computed == 3
    references(denoise, x, [0.9, 0.5, 0.1], False)
    references(denoise, x, [0.9, 0.5, 0.1], True)  # the same grid as a flow's: another ODE
    assert references.computed == 5


@pytest.mark.parametrize("sigmas_by_steps, extra, message", [
    ({}, {}, r"sigmas_by_steps must be \{steps: sigmas\} of 1 to 16 step counts"),
    ([karras_sigmas(2)], {}, r"sigmas_by_steps must be \{steps: sigmas\}"),
    ({3: karras_sigmas(2)}, {}, r"sigmas_by_steps\[3\] must have 3 steps, got 2"),
    ({True: karras_sigmas(1)}, {}, "step counts must be whole numbers >= 1"),
    ({2: karras_sigmas(2), 3: karras_sigmas(3) * 0.5}, {},
     "every schedule must start at the noise's sigma"),
    ({2: karras_sigmas(2)}, {"per_steps": {3: {}}}, r"per_steps has step counts \[3\]"),
    ({2: karras_sigmas(2)}, {"per_steps": {2: {"iterations": 1}}},
     r"per_steps\[2\] may set \['schedules', 'samplers', 'sampler_schedules'\]"),
    ({2: karras_sigmas(2)}, {"schedules": {}}, "are per step count: give them in per_steps"),
])
def test_calibrate_steps_refuses_bad_input_naming_it(sigmas_by_steps, extra, message):
    model = MixtureDenoiser(dim=DIM, components=3, seed=1)
    with pytest.raises(ValueError, match=f"^calibrate_steps: .*{message}"):
        calibrate_steps(model, noise(), sigmas_by_steps, **extra)
    assert model.calls == 0
