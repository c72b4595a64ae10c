"""The LM settings: the one defaults table and the validated options object.

``LMOptions`` is built once per sampling call (by a node, or by a sampler function from plain
keyword arguments) and validated when it is built; a bad value raises a ValueError that names
the input.  Everything downstream reads its typed fields.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

DAMPING_MODES = ("relative", "absolute", "adaptive")

# The defaults, measured by the benchmark (bench/, see README.md "Recommended settings"):
# lml_euler and lml_euler_ancestral, and the node widgets.
DEFAULTS = {
    "rank": 1,
    "damping": 1.0,
    "kappa": 0.5,
    "damping_mode": "relative",
    "omega": 0.75,
    "start_percent": 0.0,
    "end_percent": 1.0,
    "fade": 0.0,
}

# lml_dpmpp_2m: the mildest measured setting (docs/bench/study.md): DPM++ 2M is already second
# order and the LM turn is a first-order change of direction.
DPMPP_2M_DEFAULTS = {**DEFAULTS, "damping_mode": "adaptive", "omega": 0.25, "end_percent": 0.3}

# lml_wrap (LML around any sampler): the setting closest to never hurting the field's samplers
# in docs/bench/lml_v2.md (strong damping, fading with the step length).
WRAP_DEFAULTS = {**DEFAULTS, "damping": 10.0, "fade": 5.0}

# lml_euler_ancestral: fresh noise makes consecutive directions differ for reasons other than
# curvature, and a full-strength turn extrapolates that noise (1.8x euler_ancestral's error at
# 6 NFE with DEFAULTS); the wrapper's damped, fading setting does not (docs/bench/lml_v2.md).
LANGEVIN_DEFAULTS = WRAP_DEFAULTS

SOLVER_DEFAULTS = {
    "lml_euler": DEFAULTS,
    "lml_dpmpp_2m": DPMPP_2M_DEFAULTS,
    "lml_euler_ancestral": LANGEVIN_DEFAULTS,
    "lml_wrap": WRAP_DEFAULTS,
}

# The Langevin (ancestral) solver's own settings, as k-diffusion names them.
ANCESTRAL_DEFAULTS = {"eta": 1.0, "s_noise": 1.0}

OMEGA_AUTO_WIDGET = -1.0  # the node widget's value for omega "auto" (any negative value)


def omega_widget(value):
    """Translate omega between the node widget and lml_core, either way: the widget's float
    uses a negative value (-1) for "auto"; other values are the same on both sides."""
    if value == "auto":
        return OMEGA_AUTO_WIDGET
    return "auto" if value < 0 else value


def _number(name: str, value, low=None, high=None, low_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def _whole_number(name: str, value) -> int:
    try:
        whole = not isinstance(value, bool) and float(value).is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LMOptions:
    """The validated LM-correction settings of one sampling call (see lml_core/README.md)."""

    rank: int
    damping: float
    kappa: float
    damping_mode: str
    omega: float | str
    start_percent: float
    end_percent: float
    fade: float = DEFAULTS["fade"]

    def __post_init__(self):
        rank = _whole_number("rank", self.rank)
        if rank < 0:
            raise ValueError(f"rank must be >= 0 (0 switches the correction off), got {rank}")
        if self.damping_mode not in DAMPING_MODES:
            raise ValueError(f"damping_mode must be one of {DAMPING_MODES}, "
                             f"got {self.damping_mode!r}")
        values = {
            "rank": rank,
            "damping": _number("damping", self.damping, low=0.0, low_open=True),
            "kappa": _number("kappa", self.kappa, 0.0, 1.0),
            "omega": "auto" if self.omega == "auto" else _number("omega", self.omega, 0.0, 10.0),
            "start_percent": _number("start_percent", self.start_percent, 0.0, 1.0),
            "end_percent": _number("end_percent", self.end_percent, 0.0, 1.0),
            "fade": _number("fade", self.fade, 0.0, 10.0),
        }
        if values["start_percent"] > values["end_percent"]:
            raise ValueError(f"start_percent ({values['start_percent']}) must not be greater "
                             f"than end_percent ({values['end_percent']})")
        for name, value in values.items():  # store the normalised values (int, float)
            object.__setattr__(self, name, value)

    @classmethod
    def for_sampler(cls, sampler: str, options=None, **settings) -> LMOptions:
        """The options of one call of ``sampler``: ``options`` as given (already validated), or
        the sampler's defaults (SOLVER_DEFAULTS) updated with keyword ``settings``."""
        unknown = sorted(set(settings) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"{sampler}: unknown option(s) {unknown}; "
                             f"the LM options are {sorted(DEFAULTS)}")
        if options is None:
            return cls(**{**SOLVER_DEFAULTS[sampler], **settings})
        if not isinstance(options, LMOptions):
            raise ValueError(f"{sampler}: lm must be an LMOptions, got {type(options).__name__}")
        return cls(**{**options.as_dict(), **settings}) if settings else options

    def as_dict(self) -> dict:
        return asdict(self)

    def applies_at(self, step: int, total_steps: int) -> bool:
        """Whether the correction is used at step ``step`` (0-based) of ``total_steps``."""
        if self.rank == 0:
            return False
        fraction = step / total_steps
        return self.start_percent <= fraction < self.end_percent
