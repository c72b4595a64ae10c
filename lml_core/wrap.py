"""LML around any sampler: the LM correction applied to every model call of a k-diffusion-style
sampler function.

For each call ``D = model(x, sigma)`` the wrapped sampler sees

    d  = (x - D) / sigma                        the probability-flow direction of this call
    D' = x - sigma * P(d; d_prev, ..)           P: the LM operator (lm_precondition), history =
                                                the uncorrected directions of the previous calls

so every sampler built on the denoised prediction (Euler, the multistep and the SDE solvers)
moves along the corrected direction without knowing it.

The wrapper's defaults (``WRAP_DEFAULTS``) damp strongly and fade the correction as the steps
shorten (``fade``, see ``faded_damping``): a high-order solver is disturbed by a first-order
turn of its directions, most of all once its steps are short.

The history lives in the model proxy of one call of the wrapped function: nothing survives
between runs.  Where the correction does not apply (off, first call, outside the step window,
sigma 0) the proxy returns the model's output object itself, so a wrapper that never corrects
is bitwise the sampler it wraps.
"""

from __future__ import annotations

import functools

import torch

from .options import LMOptions
from .sampling import is_flow_model, lm_correct


class LMCorrectedModel:
    """The model as the wrapped sampler sees it: calls go through the LM correction; every other
    attribute (``inner_model``, ``sigmas``, ...) is the original model's."""

    def __init__(self, model, lm: LMOptions, sigmas: list[float], flow: bool):
        self._model, self._lm, self._sigmas, self._flow = model, lm, sigmas, flow
        self._history = []  # uncorrected directions of the previous calls, most recent first

    def __getattr__(self, name):
        return getattr(self._model, name)

    def _step(self, sigma: float) -> int:
        """The schedule step a call at ``sigma`` belongs to (the last sigma at or above it)."""
        step = 0
        for i, s in enumerate(self._sigmas[:-1]):
            if s >= sigma * (1 - 1e-6):
                step = i
        return step

    def __call__(self, x, sigma, **kwargs):
        denoised = self._model(x, sigma, **kwargs)
        sigma_b = sigma.reshape(-1).to(torch.float64)
        if self._lm.rank == 0 or not bool((sigma_b > 0).all()):
            return denoised
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        view = sigma_b.to(dtype).reshape(-1, *[1] * (x.ndim - 1))
        d = (x.to(dtype) - denoised.to(dtype)) / view
        corrected, cos = lm_correct(d, self._history, self._lm, self._step(float(sigma_b[0])),
                                    self._sigmas, self._flow)
        self._history = [d, *self._history][: self._lm.rank]
        if cos is None:
            return denoised
        return (x.to(dtype) - view * corrected).to(denoised.dtype)


def lml_wrap(sampler_function, lm=None, **settings):
    """A sampler function with the k-diffusion signature that runs ``sampler_function`` with the
    LM correction on the denoised prediction of each model call (see the module docstring).
    ``lm``: an ``LMOptions``; or keyword settings over the wrapper's defaults
    (``SOLVER_DEFAULTS["lml_wrap"]``)."""
    if not callable(sampler_function):
        raise ValueError(f"lml_wrap needs a sampler function, got {type(sampler_function)}")
    lm = LMOptions.for_sampler("lml_wrap", lm, **settings)

    @functools.wraps(sampler_function)
    def sample_wrapped(model, x, sigmas, extra_args=None, callback=None, disable=None,
                       **options):
        # the schedule as it came in: some samplers (uni_pc) edit the tensor in place
        sigma_values = [float(s) for s in sigmas.tolist()]
        proxy = LMCorrectedModel(model, lm, sigma_values, is_flow_model(model))
        return sampler_function(proxy, x, sigmas, extra_args=extra_args, callback=callback,
                                disable=disable, **options)

    sample_wrapped.lml_wrapped = sampler_function
    sample_wrapped.lml_options = lm
    return sample_wrapped
