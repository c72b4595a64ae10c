"""The Levenberg-Marquardt loop (lml_core.levenberg): a run that goes on from an earlier one's
theta gives the same iterates with or without the earlier run's losses, and with them rolls
out neither the base nor that theta again; a Jacobian replays the accepted step's rollout on
its rows (the same iterates, its base rollouts' model calls saved); the Jacobian is summed in
chunks; a timestep pushed past its bound is held there."""

import pytest
import torch

from lml_core.levenberg import levenberg_marquardt
from lml_core.linear_fit import LinearFit
from lml_core.objective import Fit, Recorder, Replay
from lml_core.reference import Evaluator, Reference, reference_grid
from lml_core.sigma_fit import CountedModel, SigmaFit

from exact_model import MixtureDenoiser, karras_sigmas, plain_dpmpp_2m


def mixture(rows, seed):
    """A 6-D mixture on 5 Karras steps: (sigmas, ``rows`` noises, the counted model, a floor
    under the last sigma (which may move either way), the reference)."""
    model = MixtureDenoiser(dim=6, components=3, seed=2)
    sigmas = karras_sigmas(5).double().tolist()
    x = torch.randn(rows, 6, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed)) * 80
    denoise = Evaluator(model, {}, torch.float64)
    floor = sigmas[-2] / 2
    reference = Reference(denoise, x, reference_grid(sigmas[0], floor, 16, False), False)
    return sigmas, x, denoise, floor, reference


def test_a_run_that_goes_on_does_not_roll_out_the_base_or_its_start_again():
    sigmas, x, denoise, floor, reference = mixture(12, 3)
    fit_part, val_part = slice(0, 8), slice(8, 12)
    x_fit, ref_fit = x[fit_part], reference.subset(fit_part, own_scale=True)
    x_val, ref_val = x[val_part], reference.subset(val_part, own_scale=True)
    fit = Fit(denoise, sigmas, "euler", 2, True, False, floor, 1.0)

    def heldout(theta):
        return fit.loss(fit.plan(theta), x_val, ref_val)

    def run(iterations, theta0=None, first=0, losses=None):
        before = denoise.rows
        result = levenberg_marquardt(fit, x_fit, ref_fit, heldout, 1e-3, 1e-4, iterations,
                                     10, lambda text: None, 4, 0.0, theta0, first,
                                     losses)
        return result, denoise.rows - before

    losses = {}
    (theta, _, done, _), _ = run(2, losses=losses)
    assert done == 2 and theta.abs().sum() > 0
    (fresh, _, _, _), cost_fresh = run(2, theta, done)
    (kept, _, _, _), cost_kept = run(2, theta, done, losses)
    assert torch.equal(fresh, kept)
    # Without the losses the base and theta are rolled out again on the fitting rows; theta's
    # rollout then records the first Jacobian's 4 rows, which that Jacobian replays.
    steps = len(sigmas) - 1
    assert cost_fresh - cost_kept == 2 * x_fit.shape[0] * steps - 4 * steps


class KeepsNothing:
    """The same fit, keeping nothing for its Jacobians: each rolls out its base itself."""

    def __init__(self, fit):
        self.fit = fit

    def __getattr__(self, name):
        return getattr(self.fit, name)

    def keeper(self, rows):
        return None


@pytest.mark.parametrize("kind", ["lml", "linear", "sigmas"])
@pytest.mark.parametrize("jacobian_rows", [4, 0])
def test_a_jacobian_reuses_the_accepted_steps_rollout_on_its_rows(kind, jacobian_rows):
    """The same iterates (to rounding: the model ran on other batches) as a fit whose every
    Jacobian rolls out its base itself, at jacobian_rows x steps fewer model evaluations per
    Jacobian (all the rows with jacobian_rows 0, in chunks): the LML fits replay the model's
    outputs there, the timestep-only fit reuses the outcome."""
    sigmas, x, denoise, floor, reference = mixture(14, 3)
    x_fit, ref_fit = x[:10], reference.subset(slice(0, 10), own_scale=True)
    x_val, ref_val = x[10:], reference.subset(slice(10, 14), own_scale=True)
    if kind == "sigmas":
        counted = CountedModel(lambda x, sigma, **_: denoise(x, float(sigma[0])))
        fit = SigmaFit(plain_dpmpp_2m, counted, sigmas, False, floor, trajectory=1.0)
    else:
        fit = (Fit(denoise, sigmas, "ipndm", 2, True, False, floor, 1.0) if kind == "lml" else
               LinearFit(denoise, plain_dpmpp_2m, None, sigmas, 2, True, False, floor, 1.0))
    calls = []

    def run(fit):
        before = denoise.rows
        result = levenberg_marquardt(
            fit, x_fit, ref_fit, lambda theta: fit.loss(fit.plan(theta), x_val, ref_val), 1e-3,
            1e-4, 3, 10, calls.append, jacobian_rows)
        return result, denoise.rows - before

    (theta, val, done, trace), cost = run(fit)
    (theta_own, val_own, done_own, _), cost_own = run(KeepsNothing(fit))
    assert done == done_own == 3 and not any("no step" in c for c in calls)
    assert torch.allclose(theta, theta_own, rtol=1e-9, atol=1e-12)
    assert val == pytest.approx(val_own, rel=1e-9)
    rows = jacobian_rows or x_fit.shape[0]
    assert cost_own - cost == 3 * rows * (len(sigmas) - 1)


def test_a_replay_that_is_not_the_recorded_rollout_is_refused():
    recorder = Recorder(lambda x, sigma: x * sigma, torch.tensor([0, 2]))
    x = torch.arange(8.0).reshape(4, 2)
    recorder(x, 2.0)
    replay = recorder.part(slice(1, 2))
    assert torch.equal(replay(x[2:3], 2.0), x[2:3] * 2.0)  # row 2 is the second recorded
    with pytest.raises(RuntimeError, match="not as recorded"):
        replay(x[2:3], 2.0)  # no call left
    with pytest.raises(RuntimeError, match="not as recorded"):
        Replay(recorder.calls)(x[:2], 3.0)  # another sigma


def test_a_jacobian_on_many_rows_is_summed_chunk_by_chunk():
    """normal_equations: J^T J and J^T r of 11 rows, taken JACOBIAN_CHUNK rows at a time, equal
    the sums of the whole Jacobian (to rounding), at the same model evaluations; no chunk has
    more than JACOBIAN_CHUNK rows (the memory of jacobian_rows 0 is the default's); rows as an
    index tensor (jacobian_rows_at's turn) are the same rows."""
    from lml_core import levenberg

    sigmas, x, denoise, floor, reference = mixture(11, 4)
    fit = Fit(denoise, sigmas, "ipndm_v", 2, True, False, floor, 1.0)
    theta = 0.01 * torch.randn(fit.size, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(0))
    before = denoise.rows
    residual, jac = fit.jacobian(theta, x, reference, 1e-5)
    whole = denoise.rows - before
    seen = []
    jacobian = fit.jacobian

    def counted(theta, x, reference, eps):
        seen.append(x.shape[0])
        return jacobian(theta, x, reference, eps)
    fit.jacobian = counted
    before = denoise.rows
    jtj, gradient = levenberg.normal_equations(fit, theta, x, reference, 1e-5, slice(None))
    assert denoise.rows - before == whole
    assert seen == [4, 4, 3] and max(seen) == levenberg.JACOBIAN_CHUNK
    assert torch.allclose(jtj, jac.T @ jac, rtol=1e-12, atol=0)
    assert torch.allclose(gradient, jac.T @ residual, rtol=1e-12, atol=1e-12 * float(
        (jac.T @ residual).abs().max()))
    rows = levenberg.jacobian_rows_at(2, 11, 6)  # rows 1 .. 6 in turn: an index tensor
    jtj_rows, _ = levenberg.normal_equations(fit, theta, x, reference, 1e-5, rows)
    part = fit.jacobian(theta, x[rows], reference.subset(rows), 1e-5)[1]
    assert seen[-3:] == [4, 2, 6] and torch.allclose(jtj_rows, part.T @ part, rtol=1e-12)


def test_a_step_that_pushes_a_timestep_past_the_floor_holds_it_there():
    """The last timestep starts at the floor and the gradient pushes it below: no damping makes
    that step feasible, so the parameter is held at its bound and the step taken in the others
    (before, every trial was infeasible and the fit stopped at its start)."""
    from lml_core.levenberg import pushed_past_bound

    model = MixtureDenoiser(dim=16, components=4, spread=1.0, seed=3)
    sigmas = karras_sigmas(5).double().tolist()
    x = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 80
    denoise = Evaluator(model, {}, torch.float64)
    floor = sigmas[-2]  # Karras ends at the model's sigma_min, where the reference ends
    reference = Reference(denoise, x, reference_grid(sigmas[0], floor, 64, False), False)
    fit = Fit(denoise, sigmas, "ipndm", 3, True, False, floor, 0.3)
    zero = torch.zeros(fit.size, dtype=torch.float64)
    last = fit.n_time - 1  # s_{N-1}, at the floor
    residual, jac = fit.jacobian(zero, x, reference, 1e-4)
    downhill = -(jac.T @ residual)
    assert downhill[last] > 0  # toward a smaller sigma: past the floor
    assert pushed_past_bound(fit, zero, downhill, 1e-4).tolist() == [
        p == last for p in range(fit.size)]
    base = fit.loss(fit.plan(zero), x, reference)
    theta, _, done, _ = levenberg_marquardt(
        fit, x, reference, lambda theta: fit.loss(fit.plan(theta), x, reference), 1e-3, 1e-4,
        1, 10, lambda text: None, 0)
    assert done == 1 and theta[last] == 0
    assert fit.loss(fit.plan(theta), x, reference) < 0.9 * base
