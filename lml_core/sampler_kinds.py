"""What each ComfyUI sampler name is: deterministic, stochastic (adds fresh noise), CFG++
(guided: needs a post-CFG hook), an LML sampler, or not comparable by step count; and how many
model evaluations it makes per step.

One table for the benchmark (bench/field.py) and the LML Sampler Lab (nodes/lab_report.py).
Plain data about names, so it needs no host: the names themselves come from the host's own list
(``comfy.samplers.KSampler.SAMPLERS``) where they are used.  A name this table does not know
(a newer host) is classified by what its name says (``*_cfg_pp``, ``*ancestral*``, ``*sde*``,
``*_gpu``) or reported as unknown by ``classify`` - never an error.
"""

from __future__ import annotations

from .sampling import SAMPLERS, STOCHASTIC_SAMPLERS

DETERMINISTIC = ("euler", "heun", "heunpp2", "exp_heun_2_x0", "dpm_2", "lms", "dpmpp_2m",
                 "ipndm", "ipndm_v", "deis", "res_multistep", "gradient_estimation", "uni_pc",
                 "uni_pc_bh2")
STOCHASTIC = ("euler_ancestral", "exp_heun_2_x0_sde", "dpm_2_ancestral", "dpmpp_2s_ancestral",
              "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "er_sde",
              "res_multistep_ancestral", "sa_solver", "sa_solver_pece", "seeds_2", "seeds_3",
              "ddpm", "lcm")
# CFG++ samplers replace the unconditional prediction through a post-CFG hook: they only mean
# something where there is guidance.
GUIDED_DETERMINISTIC = ("euler_cfg_pp", "dpmpp_2m_cfg_pp", "gradient_estimation_cfg_pp",
                        "res_multistep_cfg_pp")
GUIDED_STOCHASTIC = ("euler_ancestral_cfg_pp", "dpmpp_2s_ancestral_cfg_pp",
                     "res_multistep_ancestral_cfg_pp")
NOT_RUN = {
    "ddim": "the same function as euler in ComfyUI (sampler_object('ddim') is ksampler('euler'))",
    "dpm_fast": "ignores the schedule: its own log-SNR grid between the first and last nonzero "
                "sigma, and stops there (never at 0)",
    "dpm_adaptive": "adaptive step size: its model calls are not set by the step count",
}
GPU_SUFFIX = "_gpu"  # dpmpp_sde_gpu etc.: the same sampler with its Brownian tree on the device
CFG_PP_SUFFIX = "_cfg_pp"
UNKNOWN = "not run: unknown sampler (not in lml_core/sampler_kinds.py, name says nothing)"

# Model evaluations per step of the samplers that evaluate more than once per step; their last
# step (to sigma 0) is a single evaluation (heunpp2: see expected_nfe).
EVALS_PER_STEP = {
    "heun": 2, "exp_heun_2_x0": 2, "exp_heun_2_x0_sde": 2, "dpm_2": 2, "dpm_2_ancestral": 2,
    "dpmpp_2s_ancestral": 2, "dpmpp_2s_ancestral_cfg_pp": 2, "dpmpp_sde": 2, "dpmpp_sde_gpu": 2,
    "seeds_2": 2, "sa_solver_pece": 2, "seeds_3": 3,
}
GROUPS = {"deterministic": DETERMINISTIC, "stochastic": STOCHASTIC,
          "guided deterministic": GUIDED_DETERMINISTIC, "guided stochastic": GUIDED_STOCHASTIC}


def _adds_noise(name: str) -> bool:
    return "ancestral" in name or "sde" in name


def classify(name: str) -> str:
    """"deterministic", "stochastic", "guided deterministic", "guided stochastic", "lml" or
    "not run: <why>" (never an error: an unknown name is classified by its name's parts, or
    "not run: unknown ...")."""
    if name in SAMPLERS or name.startswith("lml_"):
        return "lml"
    for group, names in GROUPS.items():
        if name in names:
            return group
    if name in NOT_RUN:
        return "not run: " + NOT_RUN[name]
    if name.endswith(GPU_SUFFIX):
        base = name[: -len(GPU_SUFFIX)]
        return f"not run: {base} with its noise tree on the device"
    if name.endswith(CFG_PP_SUFFIX):
        return "guided stochastic" if _adds_noise(name) else "guided deterministic"
    if _adds_noise(name):
        return "stochastic"
    return UNKNOWN


def samplers_of_kind(group: str, host_names) -> tuple[str, ...]:
    """The host's samplers of ``group``: this table's order first (stable benchmark rows), then
    the host's other names that ``classify`` puts in the group, in the host's order."""
    host_names = list(host_names)
    known = [name for name in GROUPS[group] if name in host_names]
    return tuple(known + [name for name in host_names
                          if name not in known and classify(name) == group])


def is_stochastic(name: str) -> bool:
    """Whether sampler ``name`` adds fresh noise while sampling (by ComfyUI's defaults)."""
    if name in SAMPLERS:
        return name in STOCHASTIC_SAMPLERS
    return classify(name) in ("stochastic", "guided stochastic") or _adds_noise(name)


def expected_nfe(name: str, steps: int) -> int:
    """The model evaluations sampler ``name`` makes for ``steps`` steps ending at sigma 0, as
    ComfyUI's samplers are written (one per step where this table says nothing).
    ``dpm_adaptive`` chooses its own steps: its count is only known afterwards; this says
    ``steps``."""
    if steps < 1:
        return 0
    if name == "heunpp2":  # 3 per step, 2 on the second-to-last, 1 on the last
        return 1 if steps == 1 else 3 * steps - 3
    return EVALS_PER_STEP.get(name, 1) * (steps - 1) + 1
