"""The field: every sampler of the installed ComfyUI host, called as ComfyUI calls it.

The functions are the host's own (``comfy.samplers.sampler_object(name).sampler_function``:
``comfy.k_diffusion.sampling.sample_*``, ``comfy.extra_samplers.uni_pc.sample_unipc``), run on
the benchmark's denoisers through ``HostModel``, a stand-in for ComfyUI's model wrapper that
carries a real ``comfy.model_sampling`` object (several samplers read
``model.inner_model.inner_model.model_sampling`` or
``model.inner_model.model_patcher.get_model_object("model_sampling")``).

Every name of ``comfy.samplers.KSampler.SAMPLERS`` is in exactly one group, from the host's own
list and lml_core's table of what each sampler is (``lml_core.classify``): a newer host's name
that table does not know is classified by its name or reported as not run (results.json,
meta.host_samplers) - never an error.
"""

from __future__ import annotations

import functools

import torch

from harness.comfy_host import import_comfy

import_comfy()

import comfy.k_diffusion.sampling  # noqa: E402
import comfy.model_sampling  # noqa: E402
import comfy.samplers  # noqa: E402

from lml_core import samplers_of_kind  # noqa: E402

from .common import FLOW_SHIFT, KARRAS  # noqa: E402


def host_sampler_names() -> list[str]:
    return list(comfy.samplers.KSampler.SAMPLERS)


# The host's samplers by group (lml_core's table order first, so the rows stay in place).
DETERMINISTIC = samplers_of_kind("deterministic", host_sampler_names())
STOCHASTIC = samplers_of_kind("stochastic", host_sampler_names())
# CFG++ samplers replace the unconditional prediction through a post-CFG hook: they run only
# where there is guidance (the cfg rows), where the benchmark's CFG model calls the hook.
GUIDED_DETERMINISTIC = samplers_of_kind("guided deterministic", host_sampler_names())
GUIDED_STOCHASTIC = samplers_of_kind("guided stochastic", host_sampler_names())


def host_function(name: str):
    """The host's own sampler function for ``name`` (what KSampler calls)."""
    return comfy.samplers.sampler_object(name).sampler_function


def discards_penultimate(name: str) -> bool:
    """KSampler samples these with steps + 1 sigmas and drops the second-to-last one."""
    return name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS


def scheduler_names() -> list[str]:
    """The host's schedulers, in its own order (KSampler's scheduler combo)."""
    return list(comfy.samplers.KSampler.SCHEDULERS)


def host_sigmas(name: str, scheduler: str, flow: bool, steps: int) -> torch.Tensor:
    """The sigmas KSampler gives sampler ``name`` with ``scheduler`` at ``steps`` steps on the
    problem's model_sampling: the host's calculate_sigmas, and for the discard samplers steps + 1
    sigmas without the second-to-last one (KSampler.calculate_sigmas' rule)."""
    discard = discards_penultimate(name)
    sigmas = comfy.samplers.calculate_sigmas(model_sampling(flow), scheduler, steps + discard)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


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
