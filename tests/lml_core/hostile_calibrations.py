"""Broken and hostile calibration texts with what the error must say (tests/lml_core and the
real-server test share them), and a good one to change."""

import json

from lml_core.calibration_text import MAX_TEXT_CHARS

SIGMAS = [14.6, 7.9, 4.0, 1.9, 0.83, 0.32, 0.11, 0.029, 0.0]


# An "lml_linear" calibration's rows for SIGMAS: euler's map (x_{k+1} from x_0 and D_0 .. D_k).
LINEAR_ROWS = [[SIGMAS[k + 1] / SIGMAS[0]] + [SIGMAS[k + 1] * (1 / SIGMAS[m + 1] - 1 / SIGMAS[m])
                                              for m in range(k + 1)] for k in range(7)]
LINEAR_ROWS.append([0.0] * 8 + [1.0])


def good(**changes) -> dict:
    """A valid format-2 calibration (zero corrections, history 3) as a dict, with ``changes``;
    a key ``fitted_on.x`` changes one field of fitted_on."""
    data = {"format": "lml-calibration/2", "base": "ipndm_v", "sigmas": list(SIGMAS),
            "corrections": [[0.0] * min(i + 1, 3) for i in range(8)],
            "fitted_on": {"steps": 8, "sigma_max": 14.6, "sigma_min": 0.029, "model_kind": "eps",
                          "sigmas": list(SIGMAS), "latent_shape": [4, 8, 8],
                          "scheduler": "karras"},
            "report": {}}
    for key, value in changes.items():
        if key.startswith("fitted_on."):
            data["fitted_on"][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return data


def text(**changes) -> str:
    return json.dumps(good(**changes))


def without(field) -> str:
    data = good()
    del data["fitted_on"][field]
    return json.dumps(data)


def row(i, values) -> str:
    data = good()
    data["corrections"][i] = values
    return json.dumps(data, separators=(",", ":"))  # 100,000 zeros: under the size limit


# (case, text, what the message must say).  The brief of issue 26 lists the first fifteen.
HOSTILE = [
    ("empty", "", "the text is empty"),
    ("blank", " \n\t", "the text is empty"),
    ("empty object", "{}", "missing field(s) ['format', 'base', 'sigmas'"),
    ("null", "null", "expected a JSON object (LML Calibrate's output), got null"),
    ("a list", "[1, 2]", "expected a JSON object (LML Calibrate's output), got a list"),
    ("fitted_on with only steps", text(fitted_on={"steps": 8}), "fitted_on.sigma_max is missing"),
    ("fitted_on not an object", text(fitted_on="karras"), "fitted_on must be an object"),
    ("NaN correction", row(1, [0.0, float("nan")]), "corrections[1][1] must be a finite number"),
    ("corrections of 1e300", row(2, [1e300, 0.0, 0.0]), "corrections[2][0] = 1e+300 is beyond"),
    ("a row of 100,000 numbers", row(5, [0] * 100_000),
     "corrections[5] must hold 1 to 4 numbers (step 6 combines at most 4 directions), got 100000"),
    ("code as the base", text(base="euler; import os"), "base must be one of"),
    ("increasing sigmas", text(sigmas=SIGMAS[::-1][1:] + [0.0]),
     "sigmas must be strictly decreasing"),
    ("sigmas as strings", text(sigmas=[str(s) for s in SIGMAS]),
     "sigmas[0] must be a number, got a string '14.6'"),
    ("100,000 nested brackets", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("5 MB of junk", "x" * 5_000_000, f"over the {MAX_TEXT_CHARS:,}"),
    ("an unknown format", text(format="lml-calibration/9"), "unknown format"),
    # and more of the same kind
    ("no format", json.dumps({k: v for k, v in good().items() if k != "format"}),
     "missing field(s) ['format']"),
    ("an unknown field", text(extra=1), "unknown field(s) ['extra']"),
    ("not JSON", "not json", "not valid JSON"),
    ("an integer of 5,000 digits", text(base="euler")[:-1] + ', "x": ' + "1" * 5000 + "}",
     "not valid JSON"),
    ("sigmas as booleans", text(sigmas=[True, False]), "sigmas[0] must be a number, got a boolean"),
    ("sigmas not a list", text(sigmas="14.6, 0"), "sigmas must be a list"),
    ("sigmas not ending in 0", text(sigmas=SIGMAS[:-1]), "sigmas must end in 0"),
    ("an infinite sigma", text(sigmas=[float("inf")] + SIGMAS[1:]), "sigmas[0] must be a finite"),
    ("a sigma of 400 digits", text(sigmas=[int("9" * 400)] + SIGMAS[1:]),
     "sigmas[0] must be a finite number"),
    ("one sigma", text(sigmas=[0.0]), "sigmas must hold at least 2 values"),
    ("too few rows", text(corrections=[[0.0]] * 7), "corrections must be 8 rows"),
    ("a row of 5 at step 10", row(7, [0.0] * 5), "corrections[7] must hold 1 to 4 numbers"),
    ("a row too long for its step", row(0, [0.0, 0.0]), "corrections[0] must hold 1 to 1"),
    ("an empty row", row(3, []), "corrections[3] must hold 1 to 4"),
    ("a row not a list", row(3, 0.5), "corrections[3] must be a list"),
    ("corrections not a list", text(corrections={"0": [0.0]}), "corrections must be a list"),
    ("fitted_on a list", text(fitted_on=[8]), "fitted_on must be an object"),
    ("fitted_on null", text(fitted_on=None), "fitted_on must be an object, got null"),
    ("no fitted_on.sigmas", without("sigmas"), "fitted_on.sigmas is missing"),
    ("no fitted_on.latent_shape", without("latent_shape"), "fitted_on.latent_shape is missing"),
    ("no fitted_on.model_kind", without("model_kind"), "fitted_on.model_kind is missing"),
    ("an unknown fitted_on field", text(**{"fitted_on.cfg": 5}), "fitted_on has unknown field"),
    ("fitted_on.steps a float", text(**{"fitted_on.steps": 8.0}),
     "fitted_on.steps must be a whole number"),
    ("fitted_on.steps true", text(**{"fitted_on.steps": True}),
     "fitted_on.steps must be a whole number"),
    ("fitted_on.steps off", text(**{"fitted_on.steps": 7}), "fitted_on.steps (7) does not match"),
    ("fitted_on.sigma_max a string", text(**{"fitted_on.sigma_max": "14.6"}),
     "fitted_on.sigma_max must be a number"),
    ("fitted_on.sigma_min 0", text(**{"fitted_on.sigma_min": 0}),
     "must be positive, sigma_max >= sigma_min"),
    ("a model kind of code", text(**{"fitted_on.model_kind": "eps; rm"}),
     "fitted_on.model_kind must be one of"),
    ("fitted_on.sigmas reversed", text(**{"fitted_on.sigmas": SIGMAS[::-1]}),
     "fitted_on.sigmas must end in 0"),
    ("fitted_on.sigmas of another length", text(**{"fitted_on.sigmas": SIGMAS[1:]}),
     "fitted_on.sigmas must hold 9 values"),
    ("fitted_on ends off its sigmas", text(**{"fitted_on.sigma_min": 0.03}),
     "must be the first and last nonzero fitted_on.sigmas"),
    ("a latent shape of strings", text(**{"fitted_on.latent_shape": ["4", 8, 8]}),
     "fitted_on.latent_shape[0] must be a whole number >= 1"),
    ("a latent shape of 0", text(**{"fitted_on.latent_shape": [4, 0, 8]}),
     "fitted_on.latent_shape[1] must be a whole number >= 1"),
    ("a scheduler not a name", text(**{"fitted_on.scheduler": ["karras"]}),
     "fitted_on.scheduler must be a scheduler's name"),
    ("its own first sigma moved", text(sigmas=[15.0] + SIGMAS[1:]),
     "sigmas[0] (15) must be the first sigma it was fitted on (14.6)"),
    ("a report not an object", text(report=[1]), "report must be an object"),
    ("format 1 fitted_on with only steps",
     text(format="lml-calibration/1", fitted_on={"steps": 8}), "fitted_on.sigma_max is missing"),
    ("format 1 with format 2's fields", text(format="lml-calibration/1"),
     "fitted_on has unknown field(s) ['latent_shape', 'scheduler', 'sigmas']"),
    # LINEAR_SAMPLER ("lml_linear"): row k holds the state after step k + 1 as k + 2 numbers
    ("a linear calibration with a base", text(sampler="lml_linear", corrections=LINEAR_ROWS),
     "a calibration of 'lml_linear' has base \"\""),
    ("a linear row of the wrong length",
     text(sampler="lml_linear", base="", corrections=LINEAR_ROWS[:3] + [[0.0] * 4]
          + LINEAR_ROWS[4:]),
     "corrections[3] must hold 5 numbers (the state after step 4 from the first latent and 4 "
     "model output(s)), got 4"),
    ("a linear coefficient of 1e300",
     text(sampler="lml_linear", base="", corrections=[[1e300, 1.0]] + LINEAR_ROWS[1:]),
     "corrections[0][0] = 1e+300 is beyond"),
    ("linear rows too few", text(sampler="lml_linear", base="", corrections=LINEAR_ROWS[:7]),
     "corrections must be 8 rows"),
]

