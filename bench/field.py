"""The field: every sampler of the installed ComfyUI host, called as ComfyUI calls it.

The functions are the host's own (``comfy.samplers.sampler_object(name).sampler_function``:
``comfy.k_diffusion.sampling.sample_*``, ``comfy.extra_samplers.uni_pc.sample_unipc``), run on
the benchmark's denoisers through ``HostModel``, a stand-in for ComfyUI's model wrapper that
carries a real ``comfy.model_sampling`` object (several samplers read
``model.inner_model.inner_model.model_sampling`` or
``model.inner_model.model_patcher.get_model_object("model_sampling")``).

Every name of ``comfy.samplers.KSampler.SAMPLERS`` is in exactly one group below; an unknown
name (a newer host) stops the benchmark until it is placed.
"""

from __future__ import annotations

import functools

from harness.comfy_host import import_comfy

import_comfy()

import comfy.k_diffusion.sampling  # noqa: E402
import comfy.model_sampling  # noqa: E402
import comfy.samplers  # noqa: E402

from .common import FLOW_SHIFT, KARRAS  # noqa: E402

DETERMINISTIC = ("euler", "heun", "heunpp2", "dpm_2", "lms", "dpmpp_2m", "ipndm", "ipndm_v",
                 "deis", "res_multistep", "gradient_estimation", "uni_pc", "uni_pc_bh2")
STOCHASTIC = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
              "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "er_sde",
              "res_multistep_ancestral", "sa_solver", "sa_solver_pece", "seeds_2", "seeds_3",
              "ddpm", "lcm")
# CFG++ samplers replace the unconditional prediction through a post-CFG hook: they run only
# where there is guidance (the cfg rows), where the benchmark's CFG model calls the hook.
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


def host_sampler_names() -> list[str]:
    return list(comfy.samplers.KSampler.SAMPLERS)


def classify(name: str) -> str:
    """"deterministic", "stochastic", "guided deterministic", "guided stochastic", "lml" or
    "not run: <why>"; a ValueError for a name this file does not place."""
    if name.startswith("lml_"):
        return "lml"
    for group, names in (("deterministic", DETERMINISTIC), ("stochastic", STOCHASTIC),
                         ("guided deterministic", GUIDED_DETERMINISTIC),
                         ("guided stochastic", GUIDED_STOCHASTIC)):
        if name in names:
            return group
    if name in NOT_RUN:
        return "not run: " + NOT_RUN[name]
    if name.endswith(GPU_SUFFIX) and name[: -len(GPU_SUFFIX)] in STOCHASTIC:
        return f"not run: {name[: -len(GPU_SUFFIX)]} with its noise tree on the device"
    raise ValueError(f"host sampler {name!r} is not placed in bench/field.py")


def host_function(name: str):
    """The host's own sampler function for ``name`` (what KSampler calls)."""
    return comfy.samplers.sampler_object(name).sampler_function


def discards_penultimate(name: str) -> bool:
    """KSampler samples these with steps + 1 sigmas and drops the second-to-last one."""
    return name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS


class _VE(comfy.model_sampling.ModelSamplingContinuousEDM, comfy.model_sampling.EPS):
    pass


class _Flow(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
    pass


@functools.cache
def model_sampling(flow: bool):
    """A real model_sampling object matching the benchmark's schedules."""
    if flow:
        sampling = _Flow()
        sampling.set_parameters(shift=FLOW_SHIFT)
    else:
        sampling = _VE()
        sampling.set_parameters(KARRAS["sigma_min"], KARRAS["sigma_max"], 1.0)
    return sampling


class HostModel:
    """A denoiser ``model(x, sigma, **extra_args)`` dressed as ComfyUI's model wrapper: the
    chains ``model.inner_model.inner_model.model_sampling`` and ``model.inner_model.
    model_patcher.get_model_object("model_sampling")`` lead to a real model_sampling object.
    Counts the model calls."""

    def __init__(self, denoiser, flow: bool):
        self.denoiser, self.calls = denoiser, 0
        self.model_sampling = model_sampling(flow)
        self.inner_model = self.model_patcher = self

    def get_model_object(self, name):
        return getattr(self, name)

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        return self.denoiser(x, sigma, **extra_args)
