"""Several step counts in one run: ``calibrate_steps`` fits one Calibration per step count
(``calibrate`` for each), sharing the converged reference between them.

The reference (lml_core.reference) depends on the noise and a grid made from sigmas[0], the
floor and ``reference_steps``, not on the step count, so the fits of 4 and 8 steps from one
noise compute it once (``SharedReferences``).  Each fit is then the one ``calibrate`` alone
returns for its step count; its report counts the model calls it made itself.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch

from .calibrate import calibrate
from .calibrate_options import checked_schedule
from .calibration import Calibration, calibration_list
from .calibration_text import MAX_SET
from .reference import Reference

# What may differ between the step counts of one run: the field at that step count.
PER_STEPS = ("schedules", "samplers", "sampler_schedules")


class SharedReferences:
    """calibrate's ``references``: ``Reference(denoise, x, grid, flow)`` computed once per noise
    ``x`` and ``grid`` (the same values: compared, not assumed) and handed out as copies, so
    that each fit's robust ``weights`` stay its own.  Valid for one model and its extra_args:
    one calibrate_steps call's.  ``shared_from``: the labels of the fits whose references the
    current one reused."""

    def __init__(self):
        self.built = []  # (label, x, grid, flow, Reference)
        self.label = None  # the fit being run (its step count)
        self.shared_from = set()
        self.computed = 0

    def __call__(self, denoise, x, grid, flow) -> Reference:
        grid = [float(s) for s in grid]
        for label, known, known_grid, known_flow, reference in self.built:
            if (known_grid == grid and known_flow == flow and known.shape == x.shape
                    and known.dtype == x.dtype and known.device == x.device
                    and torch.equal(known, x)):
                self.shared_from.add(label)
                return self.copy(reference)
        reference = Reference(denoise, x, grid, flow)
        self.built.append((self.label, x, grid, flow, reference))
        self.computed += 1
        return self.copy(reference)

    @staticmethod
    def copy(reference: Reference) -> Reference:
        out = copy.copy(reference)  # the states and slopes are shared, never changed
        out.weights = None
        return out


def checked_runs(sigmas_by_steps, per_steps) -> dict:
    """{steps: (sigmas, calibrate's per-step keywords)} by step count, or a ValueError."""
    if not isinstance(sigmas_by_steps, dict) or not 1 <= len(sigmas_by_steps) <= MAX_SET:
        raise ValueError(f"calibrate_steps: sigmas_by_steps must be {{steps: sigmas}} of 1 to "
                         f"{MAX_SET} step counts, got {type(sigmas_by_steps).__name__} of "
                         f"{len(sigmas_by_steps) if isinstance(sigmas_by_steps, dict) else '?'}")
    per_steps = dict(per_steps or {})
    extra = sorted(set(per_steps) - set(sigmas_by_steps))
    if extra:
        raise ValueError(f"calibrate_steps: per_steps has step counts {extra} that "
                         f"sigmas_by_steps has not")
    runs = {}
    for steps in sorted(sigmas_by_steps):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"calibrate_steps: the step counts must be whole numbers >= 1, "
                             f"got {steps!r}")
        sigmas = checked_schedule(sigmas_by_steps[steps])
        if len(sigmas) - 1 != steps:
            raise ValueError(f"calibrate_steps: sigmas_by_steps[{steps}] must have {steps} "
                             f"steps, got {len(sigmas) - 1}")
        keywords = dict(per_steps.get(steps) or {})
        unknown = sorted(set(keywords) - set(PER_STEPS))
        if unknown:
            raise ValueError(f"calibrate_steps: per_steps[{steps}] may set {list(PER_STEPS)}, "
                             f"got {unknown}")
        runs[steps] = (sigmas, keywords)
    first = next(iter(runs.values()))[0][0]
    for steps, (sigmas, _) in runs.items():
        if not math.isclose(sigmas[0], first, rel_tol=1e-4):
            raise ValueError(f"calibrate_steps: every schedule must start at the noise's sigma "
                             f"{first:.6g}; the one of {steps} steps starts at {sigmas[0]:.6g}")
    return runs


@torch.no_grad()
def calibrate_steps(model, noise, sigmas_by_steps, extra_args=None, per_steps=None,
                    progress=None, log=None, **options) -> list[Calibration]:
    """One calibration per step count, by step count: ``calibrate(model, noise, sigmas,
    ...)`` for each of ``sigmas_by_steps`` ({steps: N + 1 sigmas ending in 0}, 1 to MAX_SET
    step counts, every schedule from the noise's sigma), with ``options`` (calibrate's) and
    ``per_steps`` ({steps: {"schedules", "samplers", "sampler_schedules"}}: the field at that
    step count; default none).  The reference is computed once and shared: the fits after the
    first spend no model calls on it, and each report's ``reference_shared_from`` names the
    step count whose fit computed it.  ``progress(evaluations, planned)`` counts the whole run
    (the later step counts' cost estimated from the current one's plan, x (their steps / its
    steps)^2); ``log`` lines start with the step count."""
    clash = sorted(set(options) & {*PER_STEPS, "references"})
    if clash:
        raise ValueError(f"calibrate_steps: {clash} are per step count: give them in per_steps")
    runs = checked_runs(sigmas_by_steps, per_steps)
    order = list(runs)
    references = SharedReferences()
    out, spent = [], 0
    for index, steps in enumerate(order):
        later = sum((n / steps) ** 2 for n in order[index + 1:])

        def counted(done, planned, spent=spent, later=later):
            progress(spent + done, spent + planned + int(later * planned))

        def said(text, steps=steps):
            log(f"{steps} steps: {text}")

        references.label, references.shared_from = steps, set()
        sigmas, keywords = runs[steps]
        calibration = calibrate(model, noise, sigmas, extra_args=extra_args,
                                progress=counted if progress is not None else None,
                                log=said if log is not None else None, references=references,
                                **keywords, **options)
        if references.shared_from:
            calibration = replace(calibration, report={
                **calibration.report, "reference_shared_from": min(references.shared_from)})
        spent += int(calibration.report["model_evaluations"])
        out.append(calibration)
    return calibration_list(out)
