"""The settings of LML Calibrate's fit: ``CALIBRATE_DEFAULTS`` (each option, what it does) and
``fit_options``, which checks every value once (a ValueError names the option), and
``checked_schedule`` for the sigmas a fit is given."""

from __future__ import annotations

import math

import torch

from .calibration import CALIBRATION_BASES
from .calibration_text import MAX_HISTORY
from .objective import dtype_name

CALIBRATE_DEFAULTS = {
    "base": "auto",            # "auto": the best of CALIBRATION_BASES on the noise, or one of them
    "history": 3,              # directions per step the correction may combine
    "move_timesteps": True,    # fit s_1 .. s_{N-1} too (s_0 fixed)
    "heldout": 0.25,           # share of the noise that selects (the iterate, the candidate)
    "test": 0.25,              # share that only scores the result (the report's test error)
    "iterations": 20,          # Levenberg-Marquardt steps (Jacobians)
    "jacobian_rows": 4,        # fitting noises each Jacobian is taken on (rotating); 0: all
    "screen_rows": 8,          # fitting noises the field is ranked on (halved midway); 0: all
    "finalists": 4,            # starts of each kind (LML, built-in) kept after that ranking
    "patience": 4,             # accepted steps without a held-out gain before stopping
    "tolerance": 3e-3,         # converged after 2 steps in a row that gain less (relative)
    "regularization": 1e-3,    # weight of |theta|^2 (pull toward the base)
    # Weight of the states on the way in the objective, and so in every choice (the field's
    # ranking, the held-out iterate and candidate: lml_core.objective.per_sample_objective).
    # 0.3, not 1: the states pull less against the final sample (typical error 14-29% lower on
    # every data set; on the exact mixtures more noises end in another component:
    # docs/bench/options_trajectory_low_*.md).
    "trajectory": 0.3,
    "reference_steps": 64,     # steps of the converged reference (one model call each)
    "reference_floor": None,   # sigma where the reference stops before denoising; None: auto
    "fd_step": None,           # finite-difference step; None: by model_dtype (FD_STEPS)
    "model_dtype": None,       # the precision the model computes in; None: the noise's dtype
    "batch_size": None,        # rows per model call; None: all at once
    # With samplers: the best this many get timestep-only fits.  0 by default (with tolerance
    # 3e-3 and the field's finer halving): see docs/bench/options.md.
    "sigma_fits": 0,
    # With samplers and base "auto": LML starts from each built-in's own steps too
    # (lml_core.projection), so the LML fit can start from the best pair.
    "builtin_starts": True,
    # Those starts fit the built-in's exact linear map with free rows (lml_core.linear_fit,
    # saved as "lml_linear") instead of its projection onto LML steps.  With trajectory 0.3:
    # the digits network's targets at the same model calls, the exact mixtures' RMS worse
    # (docs/bench/calibrated.md against calibrated_previous_defaults.md; 5 seeds).
    "linear_fits": True,
    # The LML fit starts from the best LML base and the best built-in's steps; after this
    # many iterations only the one better on the held-out noise goes on (0: both finish;
    # below 6 steps both always finish: levenberg.RACE_FROM_STEPS).  3, not 4, since every
    # choice reads the objective: at 8-10 NFE 5% fewer evaluations, the median ratios the same
    # (docs/calibration_options.md).
    "race": 3,
}


def fit_options(options: dict) -> dict:
    """CALIBRATE_DEFAULTS updated with ``options``, each checked (a ValueError names it)."""
    unknown = sorted(set(options) - set(CALIBRATE_DEFAULTS))
    if unknown:
        raise ValueError(f"calibrate: unknown option(s) {unknown}; the options are "
                         f"{sorted(CALIBRATE_DEFAULTS)}")
    opts = {**CALIBRATE_DEFAULTS, **options}
    opts["model_dtype"] = opts["model_dtype"] and dtype_name(opts["model_dtype"])  # JSON-able
    if opts["base"] != "auto" and opts["base"] not in CALIBRATION_BASES:
        raise ValueError(f"base must be 'auto' or one of {CALIBRATION_BASES}, "
                         f"got {opts['base']!r}")
    whole = {"history": 1, "iterations": 0, "patience": 1, "reference_steps": 1, "race": 0,
             "sigma_fits": 0, "jacobian_rows": 0, "screen_rows": 0, "finalists": 1}
    if opts["batch_size"] is not None:
        whole["batch_size"] = 1
    for name, low in whole.items():
        if isinstance(opts[name], bool) or int(opts[name]) != opts[name] or opts[name] < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {opts[name]!r}")
    for name in ("move_timesteps", "builtin_starts", "linear_fits"):
        if not isinstance(opts[name], bool):
            raise ValueError(f"{name} must be True or False, got {opts[name]!r}")
    if opts["history"] > MAX_HISTORY:
        raise ValueError(f"history must be at most {MAX_HISTORY} (a calibration's steps combine "
                         f"1-{MAX_HISTORY} directions), got {opts['history']}")
    if not 0 < float(opts["heldout"]) < 1:
        raise ValueError(f"heldout must be between 0 and 1, got {opts['heldout']}")
    if not 0 <= float(opts["test"]) < 1 or float(opts["heldout"]) + float(opts["test"]) >= 1:
        raise ValueError(f"test must be between 0 and 1 - heldout ({1 - float(opts['heldout'])}"
                         f"), got {opts['test']}")
    for name in ("regularization", "trajectory", "tolerance"):
        if not (math.isfinite(float(opts[name])) and float(opts[name]) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {opts[name]}")
    for name in ("fd_step", "reference_floor"):
        if opts[name] is not None and not (math.isfinite(float(opts[name]))
                                           and float(opts[name]) > 0):
            raise ValueError(f"{name} must be a finite number > 0 (or None), got {opts[name]}")
    return opts


def checked_schedule(sigmas, name="sigmas") -> list[float]:
    """``sigmas`` as floats, or a ValueError naming the input (``name``) that does not decrease
    strictly to 0."""
    values = [float(s) for s in (sigmas.tolist() if torch.is_tensor(sigmas) else sigmas)]
    if len(values) < 2 or values[-1] != 0 or not all(math.isfinite(s) for s in values) or any(
            a <= b for a, b in zip(values[:-1], values[1:])):
        raise ValueError(f"calibrate: {name} must decrease strictly to 0, got {values}")
    return values
