"""LML sampler options: defaults and validation (a ValueError that names the input)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .precondition import DAMPING_MODES

# Defaults measured by the quality benchmark (python -m lml_core.bench); see README.md.
# DEFAULTS: lml_euler and lml_euler_ancestral, and the node widgets (best geometric-mean error
# ratio against euler over the parameter study, docs/bench/study.md).
DEFAULTS = {
    "rank": 1,
    "damping": 1.0,
    "kappa": 0.5,
    "damping_mode": "relative",
    "omega": 0.75,
    "start_percent": 0.0,
    "end_percent": 1.0,
}

# DPM++ 2M is already second order; the LM rotation is an O(h) change of direction, so on our
# suite every setting made it worse.  Its default is the mildest measured: the reference's
# update-term correction, turned by a quarter of the angle, on the first 30% of the steps only.
DPMPP_2M_DEFAULTS = {**DEFAULTS, "damping_mode": "adaptive", "omega": 0.25, "end_percent": 0.3}

SOLVER_DEFAULTS = {
    "lml_euler": DEFAULTS,
    "lml_dpmpp_2m": DPMPP_2M_DEFAULTS,
    "lml_euler_ancestral": DEFAULTS,
}


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


@dataclass(frozen=True)
class LMOptions:
    """The validated LM-correction settings of one sampling call."""

    rank: int
    damping: float
    kappa: float
    damping_mode: str
    omega: float | str
    start_percent: float
    end_percent: float

    @classmethod
    def from_kwargs(cls, rank, damping, kappa, damping_mode, omega, start_percent, end_percent):
        if isinstance(rank, bool) or not float(rank).is_integer():
            raise ValueError(f"rank must be a whole number, got {rank!r}")
        rank = int(rank)
        if rank < 0:
            raise ValueError(f"rank must be >= 0 (0 switches the correction off), got {rank}")
        if damping_mode not in DAMPING_MODES:
            raise ValueError(f"damping_mode must be one of {DAMPING_MODES}, got {damping_mode!r}")
        damping = _number("damping", damping, low=0.0, low_open=True)
        kappa = _number("kappa", kappa, 0.0, 1.0)
        if omega != "auto":
            omega = _number("omega", omega, 0.0, 10.0)
        start_percent = _number("start_percent", start_percent, 0.0, 1.0)
        end_percent = _number("end_percent", end_percent, 0.0, 1.0)
        if start_percent > end_percent:
            raise ValueError(f"start_percent ({start_percent}) must not be greater than "
                             f"end_percent ({end_percent})")
        return cls(rank, damping, kappa, damping_mode, omega, start_percent, end_percent)

    def applies_at(self, step: int, total_steps: int) -> bool:
        """Whether the correction is used at step ``step`` (0-based) of ``total_steps``."""
        if self.rank == 0:
            return False
        fraction = step / total_steps
        return self.start_percent <= fraction < self.end_percent
