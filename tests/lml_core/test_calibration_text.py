"""Calibration.from_json on hostile and broken text: every case is a ValueError (nothing else)
whose message starts with "calibration:" and names the field; a good text still loads."""

import json

import pytest
from hostile_calibrations import HOSTILE, good, text

from lml_core import Calibration


@pytest.mark.parametrize("case, hostile, message", HOSTILE, ids=[case for case, *_ in HOSTILE])
def test_hostile_text_is_a_value_error_naming_the_field(case, hostile, message):
    with pytest.raises(Exception) as refused:
        Calibration.from_json(hostile)
    assert type(refused.value) is ValueError, f"{case}: {refused.value!r}"
    assert str(refused.value).startswith("calibration: ")
    assert message in str(refused.value)
    assert len(str(refused.value)) < 400  # no echo of the text itself


def test_not_a_string_is_a_value_error():
    for value in (None, b"{}", 3):
        with pytest.raises(ValueError, match="calibration: the text must be a string"):
            Calibration.from_json(value)


def test_the_dataclass_checks_the_same_fields():
    data = good(corrections=[[0.0]] * 8)
    assert Calibration(**data).corrections == [[0.0]] * 8
    with pytest.raises(ValueError, match=r"calibration: fitted_on\.sigma_max is missing"):
        Calibration(**{**data, "fitted_on": {"steps": 8}})
    with pytest.raises(ValueError, match=r"calibration: corrections\[0\]\[0\] = 2000 is beyond"):
        Calibration(**{**data, "corrections": [[2000.0]] + [[0.0]] * 7})


def test_the_good_text_loads_and_round_trips():
    calibration = Calibration.from_json(text())
    assert calibration.steps == 8 and calibration.fitted_on["scheduler"] == "karras"
    assert Calibration.from_json(calibration.to_json()) == calibration
    unnamed = good()
    del unnamed["fitted_on"]["scheduler"]  # calibrate() itself does not know the scheduler
    assert "scheduler" not in Calibration.from_json(json.dumps(unnamed)).fitted_on
