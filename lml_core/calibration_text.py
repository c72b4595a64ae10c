"""What a calibration's text may hold.  ``Calibration`` (lml_core.calibration) runs
``checked_fields`` on every construction and ``parse`` reads its JSON, so whatever a user pastes
is either a calibration the sampler can run or a ValueError that starts with "calibration:" and
names the field; nothing else escapes (no KeyError at sampling time, no RecursionError).

A text may also hold a set: one calibration per step count (``SET_FORMAT``, what LML Calibrate
writes for several step counts); ``parse_set`` reads either kind, naming a wrong entry as
``calibrations[k]``.
"""

from __future__ import annotations

import json
import math
import re

CALIBRATION_BASES = ("euler", "ipndm", "ipndm_v")
CALIBRATION_FORMAT = "lml-calibration/2"
# Format 1 recorded only the schedule's ends: still read (saved workflows keep working) and
# checked by its ends only.
FORMATS = ("lml-calibration/1", CALIBRATION_FORMAT)
FIELDS = ("format", "base", "sigmas", "corrections", "fitted_on", "report", "sampler")
OPTIONAL = ("report", "sampler")
# What a calibration runs: LML_SAMPLER (the multistep sampler on a base, with corrections) or a
# built-in sampler named by its ComfyUI name (the caller passes the function) on the fitted
# timesteps, with no base and no corrections.
LML_SAMPLER = "lml"
# LINEAR_SAMPLER: the sampler written out as its linear map (lml_core.linear_fit): row k of
# ``corrections`` is the state at model call k + 2 (the last row: the final sample) as the
# coefficients of [x_0, D_0, .., D_{k}] (k + 2 numbers), with no base.
LINEAR_SAMPLER = "lml_linear"
SAMPLER_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
REQUIRED = ("steps", "sigma_max", "sigma_min", "model_kind")
FITTED_ON = {"lml-calibration/1": (REQUIRED, ()),
             CALIBRATION_FORMAT: ((*REQUIRED, "sigmas", "latent_shape"), ("scheduler",))}
MODEL_KINDS = ("eps", "v", "edm", "flow", "unknown")

# Where a schedule counts as the one a calibration was fitted on: float32 sigmas of the same
# scheduler agree to ~1e-7; another sigma range differs by far more.
SIGMA_RTOL = 1e-4
# Step k combines at most min(k + 1, MAX_HISTORY) directions: calibrate's history is 1-4 (the
# bases' order is at most 4 too), so a longer row is not a calibration.
MAX_HISTORY = 4
# Fits stay near the base (regularization pulls them there): the corrections fitted here are
# below 2 in magnitude.  A correction of 1e3 scales a step 1000-fold and throws the sample off
# the data, so nothing beyond it is a calibration; the fit refuses such steps too (objective).
MAX_CORRECTION = 1e3
# Several calibrations in one text, one per step count: {"format": SET_FORMAT, "calibrations":
# [format-2 calibration, ...]}, at most MAX_SET of them (LML Calibrate's steps takes 16 counts).
SET_FORMAT = "lml-calibration-set/1"
SET_FIELDS = ("format", "calibrations")
MAX_SET = 16
# A calibration's text is under 8 KB (100 steps: ~40 KB; a set of 16 such: ~700 KB); refusing
# more before parsing keeps a pasted file or junk from costing the server time and memory.
MAX_TEXT_CHARS = 1024 * 1024


def fail(message: str):
    raise ValueError(f"calibration: {message}")


def shown(value) -> str:
    """``value`` for an error message: its JSON kind and, where short, its text."""
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object with {len(value)} field(s)"
    if value is None:
        return "null"
    names = {bool: "a boolean", str: "a string"}
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{names.get(type(value), type(value).__name__)} {text}"


def number(value, name: str) -> float:
    """``value`` as a finite float; JSON true/false and strings are not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"{name} must be a number, got {shown(value)}")
    try:
        value = float(value)
    except OverflowError:  # a JSON integer of hundreds of digits
        value = math.inf
    if not math.isfinite(value):
        fail(f"{name} must be a finite number, got {value}")
    return value


def whole(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        fail(f"{name} must be a whole number >= {low}, got {shown(value)}")
    return value


def listed(value, name: str) -> list:
    if not isinstance(value, (list, tuple)):
        fail(f"{name} must be a list, got {shown(value)}")
    return list(value)


def schedule(values, name: str) -> list[float]:
    """N + 1 finite sigmas, strictly decreasing to 0."""
    sig = [number(v, f"{name}[{k}]") for k, v in enumerate(listed(values, name))]
    if len(sig) < 2:
        fail(f"{name} must hold at least 2 values (one step), got {len(sig)}")
    if sig[-1] != 0:
        fail(f"{name} must end in 0, got {sig[-1]:.6g}")
    for k, (a, b) in enumerate(zip(sig[:-1], sig[1:])):
        if a <= b:
            fail(f"{name} must be strictly decreasing, but {name}[{k}] = {a:.6g} <= "
                 f"{name}[{k + 1}] = {b:.6g}")
    return sig


def checked_rows(rows, steps: int, length) -> list[list[float]]:
    """``steps`` rows of finite numbers within MAX_CORRECTION; ``length(k, n)``: None where
    row k may hold n numbers, else what it must hold (for the message)."""
    rows = listed(rows, "corrections")
    if len(rows) != steps:
        fail(f"corrections must be {steps} rows (one per step), got {len(rows)}")
    checked = []
    for k, row in enumerate(rows):
        row = listed(row, f"corrections[{k}]")
        wanted = length(k, len(row))
        if wanted is not None:
            fail(f"corrections[{k}] must hold {wanted}, got {len(row)}")
        values = [number(c, f"corrections[{k}][{j}]") for j, c in enumerate(row)]
        for j, c in enumerate(values):
            if abs(c) > MAX_CORRECTION:
                fail(f"corrections[{k}][{j}] = {c:.6g} is beyond +-{MAX_CORRECTION:g}, "
                     "more than any fit makes")
        checked.append(values)
    return checked


def correction_rows(rows, steps: int) -> list[list[float]]:
    """An LML_SAMPLER calibration's corrections: row i of 1 to min(i + 1, MAX_HISTORY)."""
    def length(i, n):
        most = min(i + 1, MAX_HISTORY)
        return None if 1 <= n <= most else (
            f"1 to {most} numbers (step {i + 1} combines at most {most} directions)")
    return checked_rows(rows, steps, length)


def linear_rows(rows, steps: int) -> list[list[float]]:
    """A LINEAR_SAMPLER calibration's rows: row k of k + 2 numbers."""
    def length(k, n):
        return None if n == k + 2 else (
            f"{k + 2} numbers (the state after step {k + 1} from the first latent and "
            f"{k + 1} model output(s))")
    return checked_rows(rows, steps, length)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=SIGMA_RTOL)


def fitted_schedule(fitted_on, steps: int, form: str) -> dict:
    """``fitted_on`` checked for ``form``: steps, the ends, the model kind and (format 2) the
    whole schedule and one sample's latent shape; the scheduler's name where known."""
    if not isinstance(fitted_on, dict):
        fail(f"fitted_on must be an object, got {shown(fitted_on)}")
    required, optional = FITTED_ON[form]
    unknown = sorted(str(k) for k in set(fitted_on) - set(required) - set(optional))
    if unknown:
        fail(f"fitted_on has unknown field(s) {unknown}")
    for name in required:
        if name not in fitted_on:
            fail(f"fitted_on.{name} is missing")
    fit = dict(fitted_on)
    if whole(fit["steps"], "fitted_on.steps", 1) != steps:
        fail(f"fitted_on.steps ({fit['steps']}) does not match its {steps} sigmas")
    fit["sigma_max"] = number(fit["sigma_max"], "fitted_on.sigma_max")
    fit["sigma_min"] = number(fit["sigma_min"], "fitted_on.sigma_min")
    if not fit["sigma_max"] >= fit["sigma_min"] > 0:
        fail(f"fitted_on.sigma_max ({fit['sigma_max']:.6g}) and sigma_min "
             f"({fit['sigma_min']:.6g}) must be positive, sigma_max >= sigma_min")
    if fit["model_kind"] not in MODEL_KINDS:
        fail(f"fitted_on.model_kind must be one of {MODEL_KINDS}, got {shown(fit['model_kind'])}")
    if "sigmas" in required:
        fit["sigmas"] = schedule(fit["sigmas"], "fitted_on.sigmas")
        if len(fit["sigmas"]) != steps + 1:
            fail(f"fitted_on.sigmas must hold {steps + 1} values (steps + 1), "
                 f"got {len(fit['sigmas'])}")
        if not (close(fit["sigmas"][0], fit["sigma_max"])
                and close(fit["sigmas"][-2], fit["sigma_min"])):
            fail("fitted_on.sigma_max and sigma_min must be the first and last nonzero "
                 "fitted_on.sigmas")
        fit["latent_shape"] = [whole(n, f"fitted_on.latent_shape[{k}]", 1) for k, n in
                               enumerate(listed(fit["latent_shape"], "fitted_on.latent_shape"))]
    if "scheduler" in fit and not (isinstance(fit["scheduler"], str)
                                   and 0 < len(fit["scheduler"]) <= 100):
        fail(f"fitted_on.scheduler must be a scheduler's name, got {shown(fit['scheduler'])}")
    return fit


def checked_fields(form, base, sigmas, corrections, fitted_on, report, sampler=LML_SAMPLER):
    """(sigmas, corrections, fitted_on) as the sampler uses them, or a ValueError naming the
    first field that is wrong."""
    if not isinstance(form, str) or form not in FORMATS:
        named = repr(form[:40]) if isinstance(form, str) else shown(form)
        fail(f"unknown format {named} (this version reads {list(FORMATS)})")
    if not (isinstance(sampler, str) and SAMPLER_NAME.fullmatch(sampler)):
        fail(f"sampler must be a sampler's name (lower-case letters, digits, _), got "
             f"{shown(sampler)}")
    linear = sampler == LINEAR_SAMPLER
    builtin = sampler != LML_SAMPLER and not linear
    if builtin and (base != "" or corrections != []):
        fail(f"a calibration of the built-in sampler {sampler!r} has base \"\" and no "
             f"corrections, got base {shown(base)} and corrections {shown(corrections)}")
    if linear and base != "":
        fail(f"a calibration of {LINEAR_SAMPLER!r} has base \"\" (its rows are the whole "
             f"sampler), got base {shown(base)}")
    if sampler == LML_SAMPLER and (not isinstance(base, str) or base not in CALIBRATION_BASES):
        fail(f"base must be one of {CALIBRATION_BASES}, got {shown(base)}")
    sig = schedule(sigmas, "sigmas")
    steps = len(sig) - 1
    rows = ([] if builtin else linear_rows(corrections, steps) if linear
            else correction_rows(corrections, steps))
    # A built-in sampler of several model calls per step runs fewer steps of its own than the
    # schedule it was fitted for has (the same model calls).
    own_steps = fitted_on.get("steps") if builtin and isinstance(fitted_on, dict) else None
    fit = fitted_schedule(fitted_on, own_steps if isinstance(own_steps, int) and not
                          isinstance(own_steps, bool) and own_steps >= steps else steps, form)
    first = fit["sigmas"][0] if "sigmas" in fit else fit["sigma_max"]
    if not close(sig[0], first):  # the fit moves s_1 .. s_{N-1} only
        fail(f"sigmas[0] ({sig[0]:.6g}) must be the first sigma it was fitted on ({first:.6g})")
    if not isinstance(report, dict):
        fail(f"report must be an object, got {shown(report)}")
    return sig, rows, fit


def json_object(text) -> dict:
    """The JSON object of a calibration's text (size and JSON checked), its fields unchecked."""
    if not isinstance(text, str):
        fail(f"the text must be a string, got {shown(text)}")
    if not text.strip():
        fail("the text is empty: paste LML Calibrate's calibration output")
    if len(text) > MAX_TEXT_CHARS:
        fail(f"the text is {len(text):,} characters, over the {MAX_TEXT_CHARS:,} a calibration "
             "can have (LML Calibrate's are under 8 KB a step count)")
    try:
        data = json.loads(text)
    except RecursionError:
        fail("not valid JSON (nested too deeply)")
    except ValueError as error:  # JSONDecodeError, or an integer of too many digits
        fail(f"not valid JSON ({error})")
    if not isinstance(data, dict):
        fail(f"expected a JSON object (LML Calibrate's output), got {shown(data)}")
    return data


def present(data: dict, fields=FIELDS, optional=OPTIONAL) -> dict:
    """``data`` with every required field of ``fields`` and no other."""
    missing = [name for name in fields if name not in optional and name not in data]
    if missing:
        fail(f"missing field(s) {missing}")
    unknown = sorted(str(k) for k in set(data) - set(fields))
    if unknown:
        fail(f"unknown field(s) {unknown}")
    return data


def parse(text) -> dict:
    """The JSON object of a calibration's text, its fields present and known (their values are
    checked by ``checked_fields``).  A set (several step counts) is refused: ``parse_set``."""
    data = json_object(text)
    if data.get("format") == SET_FORMAT:
        fail(f"the text holds calibrations for several step counts ({SET_FORMAT}), not one: "
             "Sampler LML Calibrated reads it")
    return present(data)


def in_entry(k: int, error: ValueError) -> ValueError:
    """``error`` (a "calibration: ..." message) as the error of a set's entry ``k``."""
    return ValueError(f"calibration: calibrations[{k}]: "
                      f"{str(error).removeprefix('calibration: ')}")


def parse_set(text) -> tuple[bool, list[dict]]:
    """(is a set, the JSON objects of its calibrations): a set's entries (1 to MAX_SET
    objects, each of format 2 with its fields present and known), or one calibration as a list
    of one.  The values are checked by ``checked_fields``; distinct step counts by
    ``check_step_counts``."""
    data = json_object(text)
    if data.get("format") != SET_FORMAT:
        return False, [present(data)]
    present(data, SET_FIELDS, ())
    entries = listed(data["calibrations"], "calibrations")
    if not 1 <= len(entries) <= MAX_SET:
        fail(f"calibrations must hold 1 to {MAX_SET} calibrations (one per step count), got "
             f"{len(entries)}")
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            fail(f"calibrations[{k}] must be an object (a calibration), got {shown(entry)}")
        try:
            present(entry)
            if entry["format"] != CALIBRATION_FORMAT:
                named = repr(entry["format"][:40]) if isinstance(entry["format"], str) else shown(
                    entry["format"])
                fail(f"format must be {CALIBRATION_FORMAT!r} in a set, got {named}")
        except ValueError as error:
            raise in_entry(k, error) from None
    return True, entries


def check_step_counts(counts) -> None:
    """A set holds one calibration per step count: a ValueError names the entry that repeats
    one, and a set of more than MAX_SET."""
    if len(counts) > MAX_SET:
        fail(f"a set holds at most {MAX_SET} calibrations (one per step count), got "
             f"{len(counts)}")
    first = {}
    for k, steps in enumerate(counts):
        if steps in first:
            fail(f"calibrations[{k}] is fitted for {steps} steps, as calibrations[{first[steps]}] "
                 "is: a set holds one calibration per step count")
        first[steps] = k
