"""LML core: the damped low-rank Levenberg-Marquardt preconditioner and sampler loops.

Pure torch; never imports comfy.  See lml_core/README.md for the math.
"""

from .adaptive import adaptive_lambda, auto_omega
from .options import DEFAULTS, DPMPP_2M_DEFAULTS, SOLVER_DEFAULTS, LMOptions
from .precondition import DAMPING_MODES, lm_precondition
from .samplers import (
    SAMPLERS,
    sample_lml_dpmpp_2m,
    sample_lml_euler,
    sample_lml_euler_ancestral,
)

__all__ = [
    "DAMPING_MODES",
    "DEFAULTS",
    "DPMPP_2M_DEFAULTS",
    "LMOptions",
    "SAMPLERS",
    "SOLVER_DEFAULTS",
    "adaptive_lambda",
    "auto_omega",
    "lm_precondition",
    "sample_lml_dpmpp_2m",
    "sample_lml_euler",
    "sample_lml_euler_ancestral",
]
