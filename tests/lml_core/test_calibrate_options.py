"""Each of calibrate's options does what CALIBRATE_DEFAULTS says, measured on small fits of an
exact-score mixture (3 steps, 12 noises: a fit takes well under a second)."""

import math

import pytest
import torch

from lml_core import CALIBRATE_DEFAULTS, calibrate, calibrate_sigmas
from lml_core.calibrate_options import fit_options
from lml_core.objective import Fit
from lml_core.reference import Evaluator, Reference, reference_grid

from exact_model import MixtureDenoiser, karras_sigmas, plain_dpmpp_2m, plain_euler

DIM = 8
SIGMAS = karras_sigmas(3).double()
SMALL = {"iterations": 3, "reference_steps": 8}


@pytest.fixture(scope="module")
def model():
    return MixtureDenoiser(dim=DIM, components=3, spread=1.0, seed=5)


def noise(n=12, seed=1):
    return torch.randn(n, DIM, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed)) * 80.0


def fitted_values(calibration):
    """The fitted numbers in one flat list: the timesteps, then the corrections."""
    return calibration.sigmas + [c for row in calibration.corrections for c in row]


def test_every_option_is_tested_here_or_in_test_calibrate():
    tested = {"base", "history", "heldout", "iterations", "reference_floor"}  # test_calibrate
    tested |= {"move_timesteps", "patience", "regularization", "trajectory", "reference_steps",
               "fd_step", "batch_size"}
    tested |= {"sigma_fits"}  # test_calibrate_field
    tested |= {"builtin_starts", "race"}  # test_projection
    tested |= {"linear_fits"}  # test_linear_fit
    tested |= {"test", "jacobian_rows", "screen_rows", "finalists", "tolerance", "model_dtype"}
    assert set(CALIBRATE_DEFAULTS) == tested


def test_move_timesteps_false_keeps_the_given_schedule(model):
    fixed = calibrate(model, noise(), SIGMAS, move_timesteps=False, **SMALL)
    assert fixed.sigmas == SIGMAS.tolist()
    moved = calibrate(model, noise(), SIGMAS, **SMALL)
    assert moved.report["iterations"] > 0 and moved.sigmas != SIGMAS.tolist()


def test_batch_size_splits_the_model_calls_without_changing_the_fit(model):
    whole = calibrate(model, noise(), SIGMAS, **SMALL)
    split = calibrate(model, noise(), SIGMAS, batch_size=4, **SMALL)
    # Equal up to the order of float64 sums in the model (the last step's tiny corrections).
    assert fitted_values(split) == pytest.approx(fitted_values(whole), rel=1e-9, abs=1e-9)
    assert split.report["model_evaluations"] == whole.report["model_evaluations"]
    assert split.report["model_calls"] > whole.report["model_calls"]
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        calibrate(model, noise(), SIGMAS, batch_size=0)


def test_regularization_pulls_toward_the_base(model):
    """A huge weight of |theta|^2 keeps the sampler at its base; 0 (no pull) fits freely."""
    pinned = calibrate(model, noise(), SIGMAS, regularization=1e6, base="ipndm", **SMALL)
    assert max(abs(c) for row in pinned.corrections for c in row) < 1e-4
    assert pinned.sigmas == pytest.approx(SIGMAS.tolist(), rel=1e-4)
    free = calibrate(model, noise(), SIGMAS, regularization=0, base="ipndm", **SMALL)
    assert free.report["iterations"] > 0
    assert max(abs(c) for row in free.corrections for c in row) > 1e-3


def test_trajectory_zero_fits_the_final_sample_only(model):
    evaluator = Evaluator(model, {}, torch.float64)
    x = noise(4)
    reference = Reference(evaluator, x, reference_grid(80.0, 0.002, 8, False), False)
    sigmas = SIGMAS.tolist()
    rows = x.numel()
    final_only = Fit(evaluator, sigmas, "ipndm", 3, True, False, 0.002, trajectory=0.0)
    plan = final_only.plan(torch.zeros(final_only.size, dtype=torch.float64))
    assert final_only.residual(final_only.rollout(plan, x), plan[0], reference).numel() == rows
    with_states = Fit(evaluator, sigmas, "ipndm", 3, True, False, 0.002, trajectory=1.0)
    residual = with_states.residual(with_states.rollout(plan, x), plan[0], reference)
    assert residual.numel() == rows * len(sigmas[1:-1]) + rows  # the 2 states on the way too
    a = calibrate(model, noise(), SIGMAS, trajectory=0, **SMALL)
    b = calibrate(model, noise(), SIGMAS, **SMALL)
    assert fitted_values(a) != fitted_values(b)


def test_patience_stops_after_that_many_steps_without_a_heldout_gain(model):
    calibration = calibrate(model, noise(16, 3), SIGMAS, patience=1, iterations=30,
                            reference_steps=8)
    heldout = [val for _objective, val in calibration.report["trace"]]
    best, stale = 1.0, 0
    for k, val in enumerate(heldout):
        if val < best * (1 - 1e-4):
            best, stale = val, 0
        else:
            stale += 1
            assert stale == 1 and k == len(heldout) - 1, "the fit went on after a stale step"
    assert calibration.report["heldout_loss"] == pytest.approx(min([1.0, *heldout]), rel=1e-5)


def test_fd_step_sets_the_finite_difference_step(model):
    """A small step gives the derivative (two small steps agree); a huge one does not."""
    a = calibrate(model, noise(), SIGMAS, fd_step=1e-4, iterations=1, reference_steps=8)
    b = calibrate(model, noise(), SIGMAS, fd_step=1e-6, iterations=1, reference_steps=8)
    c = calibrate(model, noise(), SIGMAS, fd_step=0.5, iterations=1, reference_steps=8)
    assert a.report["trace"][0][0] == pytest.approx(b.report["trace"][0][0], rel=1e-3)
    assert fitted_values(c) != pytest.approx(fitted_values(a), rel=1e-3)
    with pytest.raises(ValueError, match="fd_step must be a finite number > 0"):
        calibrate(model, noise(), SIGMAS, fd_step=-1.0)


def test_model_dtype_sets_the_default_fd_step(model):
    """The model's precision, not the noise's, picks the step (objective.FD_STEPS): float16
    computes exactly what fd_step=0.1 does, float32 noise alone what fd_step=1e-2 does; the
    report records the name; an explicit fd_step wins; a non-float dtype is refused."""
    x, opts = noise().float(), {"iterations": 1, "reference_steps": 8}
    half = calibrate(model, x, SIGMAS.float(), model_dtype=torch.float16, **opts)
    assert fitted_values(half) == fitted_values(calibrate(model, x, SIGMAS.float(),
                                                          fd_step=0.1, **opts))
    plain = calibrate(model, x, SIGMAS.float(), **opts)
    assert fitted_values(plain) == fitted_values(calibrate(model, x, SIGMAS.float(),
                                                           fd_step=1e-2, **opts))
    assert fitted_values(plain) != fitted_values(half)
    assert half.report["options"]["model_dtype"] == "float16"
    named = calibrate(model, x, SIGMAS.float(), model_dtype="bfloat16", fd_step=0.1, **opts)
    assert fitted_values(named) == fitted_values(half)
    with pytest.raises(ValueError, match="model_dtype must be a floating torch dtype"):
        calibrate(model, x, SIGMAS.float(), model_dtype="int8")


def test_reference_steps_sets_the_reference_cost(model):
    """Each reference step is one model call per noise: 8 more steps, 8 more evaluations per
    noise (12 noises)."""
    a = calibrate(model, noise(), SIGMAS, iterations=0, reference_steps=8)
    b = calibrate(model, noise(), SIGMAS, iterations=0, reference_steps=16)
    assert b.report["model_evaluations"] - a.report["model_evaluations"] == 8 * 12


def test_test_share_sets_the_noise_that_only_scores(model):
    """test=0: no test part (the fit has those noises; no test score); a test share that leaves
    no fitting noise is refused, naming test."""
    none = calibrate(model, noise(), SIGMAS, test=0, **SMALL)
    assert none.report["samples"] == {"fit": 9, "heldout": 3, "test": 0}
    assert none.report["test_rms"] is None and none.report["test_rms_base"] is None
    some = calibrate(model, noise(), SIGMAS, test=0.25, **SMALL)
    assert some.report["samples"] == {"fit": 6, "heldout": 3, "test": 3}
    assert some.report["test_rms"] > 0 and some.report["test_rms_base"] > 0
    with pytest.raises(ValueError, match="test must be between 0 and 1 - heldout"):
        calibrate(model, noise(), SIGMAS, heldout=0.5, test=0.5)


def test_jacobian_rows_takes_each_jacobian_on_that_many_noises(model):
    """Fewer Jacobian rows cost fewer evaluations; the objective still falls at every accepted
    step (each trial is judged on all the fitting noises); as many rows as the fitting part
    is the whole Jacobian, the same fit as 0."""
    opts = {"iterations": 3, "reference_steps": 8, "test": 0, "patience": 10}
    whole = calibrate(model, noise(), SIGMAS, jacobian_rows=0, base="ipndm", **opts)
    same = calibrate(model, noise(), SIGMAS, jacobian_rows=9, base="ipndm", **opts)
    assert fitted_values(same) == fitted_values(whole)
    part = calibrate(model, noise(), SIGMAS, jacobian_rows=2, base="ipndm", **opts)
    assert part.report["model_evaluations"] < whole.report["model_evaluations"]
    objective = [o for o, _val in part.report["trace"]]
    assert objective and all(b < a for a, b in zip([1.0, *objective], objective))
    with pytest.raises(ValueError, match="jacobian_rows must be a whole number >= 0"):
        calibrate(model, noise(), SIGMAS, jacobian_rows=-1)


def test_tolerance_stops_a_converged_fit(model):
    """With a huge tolerance every accepted step counts as converged: the fit stops after 2;
    with 0 it runs until patience or the iteration cap."""
    opts = {"iterations": 12, "reference_steps": 8, "patience": 20, "base": "ipndm"}
    logs = []
    quick = calibrate(model, noise(), SIGMAS, tolerance=1.0, log=logs.append, **opts)
    assert len(quick.report["trace"]) == 2 or quick.report["iterations"] == 0
    assert any("converged" in text for text in logs)
    full = calibrate(model, noise(), SIGMAS, tolerance=0, **opts)
    assert len(full.report["trace"]) > 2
    with pytest.raises(ValueError, match="tolerance must be a finite number >= 0"):
        calibrate(model, noise(), SIGMAS, tolerance=-1)


class RowCounter:
    """``model`` recording the rows of every call it gets and the dtype of its input."""

    def __init__(self, model):
        self.model, self.rows, self.dtypes = model, [], set()

    def __call__(self, x, sigma, **extra_args):
        self.rows.append(x.shape[0])
        self.dtypes.add(x.dtype)
        return self.model(x, sigma, **extra_args)


def test_batch_size_bounds_every_model_call_of_every_fit(model):
    """The reference, the LML rollouts and their Jacobian forks (Evaluator) and the built-in
    samplers' runs, Jacobians and scores (run_sampler) all call the model with at most
    batch_size rows, and the fits are the unsplit ones."""
    samplers = {"euler": plain_euler, "dpmpp_2m": plain_dpmpp_2m}
    fits = {}
    for batch_size in (None, 4):
        counter = RowCounter(model)
        field = calibrate(counter, noise(), SIGMAS, samplers=samplers, batch_size=batch_size,
                          sigma_fits=1, **SMALL)
        sigmas = calibrate_sigmas(counter, noise(), SIGMAS, plain_dpmpp_2m,
                                  batch_size=batch_size, **SMALL)
        fits[batch_size] = field, sigmas, counter.rows
    (whole_field, whole_sigmas, whole_rows), (field, sigmas, rows) = fits[None], fits[4]
    assert max(whole_rows) == 12 and max(rows) == 4  # 12 noises: the reference on all at once
    assert sum(rows) == sum(whole_rows) and len(rows) > len(whole_rows)
    assert field.report["chosen"] == whole_field.report["chosen"]
    assert "calibrated sigmas" in " ".join(field.report["candidates"])  # a sampler was fitted
    for split, whole in ((field, whole_field), (sigmas, whole_sigmas)):
        assert fitted_values(split) == pytest.approx(fitted_values(whole), rel=1e-9, abs=1e-9)


class Float16Model:
    """A stand-in for a float16 checkpoint: the model computes in float16 (its input is
    rounded to float16) and returns float16, whatever the state's dtype."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, sigma, **extra_args):
        half = x.to(torch.float16)
        return self.model(half.to(torch.float64), sigma.to(torch.float64)).to(torch.float16)


def test_a_float16_model_is_fitted_in_float32(model):
    """The fit's states and arithmetic stay float32 with a model that computes in float16 (and
    float16 noise): the model gets float32 states, a host sampler gets float32 back from the
    model (its history is not float16), and the calibration is finite."""
    seen = []

    def euler_watching(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in)
            seen.append((x.dtype, denoised.dtype))
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    counter = RowCounter(Float16Model(model))
    calibration = calibrate(counter, noise().to(torch.float16), SIGMAS.float(),
                            samplers={"euler": euler_watching}, **SMALL)
    assert counter.dtypes == {torch.float32}
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    values = fitted_values(calibration) + [calibration.report["heldout_rms"],
                                           calibration.report["fit_rms"]]
    assert all(math.isfinite(v) for v in values)
    assert calibration.report["heldout_rms"] < calibration.report["heldout_rms_bases"][
        "euler + given"]  # a fit that gains, in float16 too


def test_each_rollout_is_run_once_for_the_fit_the_choice_and_the_report(model):
    """With no Levenberg-Marquardt step the model evaluations add up exactly: the reference,
    the field on the fitting noise (3 bases), the fit's base objective, and each start once on
    the selection and the test noise; the report's and the choice's scores reuse them."""
    n, steps, ref = 16, 3, 8  # 8 fitting, 4 selection, 4 test noises
    calibration = calibrate(model, noise(n), SIGMAS, iterations=0, reference_steps=ref)
    assert calibration.report["samples"] == {"fit": 8, "heldout": 4, "test": 4}
    reference = (ref + 1) * n  # a model call a step and the denoising call
    field = 3 * 8 * steps
    base_objective = 8 * steps
    selection_and_test = 3 * (4 + 4) * steps
    assert calibration.report["model_evaluations"] == (reference + field + base_objective
                                                        + selection_and_test)


@pytest.mark.parametrize("name", ["move_timesteps", "builtin_starts", "linear_fits"])
def test_a_switch_is_true_or_false(name):
    """The fit's switches take a boolean only (1 or "yes" from a hand-written prompt is
    refused by name, not read as on)."""
    for value in (1, "yes", None):
        with pytest.raises(ValueError, match=f"^{name} must be True or False, got "):
            fit_options({name: value})
    assert fit_options({name: False})[name] is False
