"""LML core: the damped low-rank Levenberg-Marquardt preconditioner and sampler loops.

Pure torch; never imports comfy.  Modules import one way, each only from those before it:
gram, options -> adaptive -> precondition -> sampling -> wrap -> sampler_kinds ->
calibration_text -> calibration -> reference -> objective -> sigma_fit -> projection ->
levenberg -> field -> calibrate_options -> calibrate -> calibrate_steps.
See lml_core/README.md.
"""

from .adaptive import adaptive_lambda, auto_omega, half_log_snr, step_omega
from .calibrate import calibrate, calibrate_sigmas
from .calibrate_options import CALIBRATE_DEFAULTS
from .calibrate_steps import calibrate_steps
from .calibration import (
    CALIBRATION_BASES,
    Calibration,
    calibrations_from_json,
    calibrations_to_json,
    pick_calibration,
    sample_lml_calibrated,
)
from .options import (
    ANCESTRAL_DEFAULTS,
    DAMPING_MODES,
    DEFAULTS,
    DPMPP_2M_DEFAULTS,
    OMEGA_AUTO_WIDGET,
    SOLVER_DEFAULTS,
    WRAP_DEFAULTS,
    LMOptions,
    omega_widget,
)
from .precondition import lm_precondition
from .sampler_kinds import classify, expected_nfe, is_stochastic, samplers_of_kind
from .sampling import (
    SAMPLERS,
    STOCHASTIC_SAMPLERS,
    is_flow_model,
    sample_lml_dpmpp_2m,
    sample_lml_euler,
    sample_lml_euler_ancestral,
    sample_lml_euler_ancestral_RF,
)
from .wrap import lml_wrap

__all__ = [
    "ANCESTRAL_DEFAULTS",
    "CALIBRATE_DEFAULTS",
    "CALIBRATION_BASES",
    "Calibration",
    "DAMPING_MODES",
    "DEFAULTS",
    "DPMPP_2M_DEFAULTS",
    "LMOptions",
    "OMEGA_AUTO_WIDGET",
    "SAMPLERS",
    "SOLVER_DEFAULTS",
    "STOCHASTIC_SAMPLERS",
    "adaptive_lambda",
    "auto_omega",
    "calibrate",
    "calibrate_sigmas",
    "calibrate_steps",
    "calibrations_from_json",
    "calibrations_to_json",
    "classify",
    "expected_nfe",
    "half_log_snr",
    "is_flow_model",
    "is_stochastic",
    "lm_precondition",
    "lml_wrap",
    "omega_widget",
    "pick_calibration",
    "sample_lml_calibrated",
    "sample_lml_dpmpp_2m",
    "sample_lml_euler",
    "sample_lml_euler_ancestral",
    "sample_lml_euler_ancestral_RF",
    "samplers_of_kind",
    "step_omega",
    "WRAP_DEFAULTS",
]
