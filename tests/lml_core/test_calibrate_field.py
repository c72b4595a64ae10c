"""calibrate against the field: started from the best (sampler, schedule) pair it measures,
it returns the best of its candidates on the held-out noise; calibrate_sigmas fits one
sampler's timesteps; a calibration naming a built-in sampler runs that sampler."""

import math

import pytest
import torch

from lml_core import Calibration, calibrate, calibrate_sigmas, sample_lml_calibrated
from lml_core.objective import Fit
from lml_core.reference import Evaluator, Reference, reference_grid
from lml_core.sigma_fit import SigmaFit, run_sampler

from exact_model import MixtureDenoiser, flow_sigmas, karras_sigmas, plain_dpmpp_2m, plain_euler

DIM = 16


def noise(n, seed, scale=80.0):
    return torch.randn(n, DIM, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed)) * scale


def exponential_sigmas(n, sigma_min=0.002, sigma_max=80.0):
    return torch.cat([torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n,
                                               dtype=torch.float64)), torch.zeros(1)])


def uniform_sigmas(n, sigma_min=0.03, sigma_max=80.0):
    """A schedule ending well above the model's sigma_min, as sgm_uniform's does."""
    t = torch.linspace(1.0, 0.0, n, dtype=torch.float64)
    return torch.cat([sigma_min * (sigma_max / sigma_min) ** t, torch.zeros(1)])


def plain_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Two model calls per step: left out of the one-call field."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i] * s_in)) / sigmas[i]
        x_2 = x + d * (sigmas[i + 1] - sigmas[i])
        if sigmas[i + 1] > 0:
            d_2 = (x_2 - model(x_2, sigmas[i + 1] * s_in)) / sigmas[i + 1]
            x_2 = x + (d + d_2) / 2 * (sigmas[i + 1] - sigmas[i])
        x = x_2
    return x


SAMPLERS = {"euler": plain_euler, "dpmpp_2m": plain_dpmpp_2m, "heun": plain_heun}


def reference(model, x, floor=0.002):
    return Reference(Evaluator(model, {}, torch.float64), x,
                     reference_grid(80.0, floor, 64, False), False).final


def rms(a, b):
    return float(((a - b) ** 2).mean().sqrt())


@pytest.fixture(scope="module")
def field_fit():
    model = MixtureDenoiser(dim=DIM, components=4, spread=1.0, seed=3)
    schedules = {"karras": karras_sigmas(4).double(), "exponential": exponential_sigmas(4),
                 "uniform": uniform_sigmas(4)}
    calibration = calibrate(model, noise(32, 1), schedules["karras"], schedules=schedules,
                            samplers=SAMPLERS, iterations=8, sigma_fits=1)
    return model, schedules, calibration


def test_the_winner_is_the_best_candidate_on_the_heldout_noise(field_fit):
    _, _, calibration = field_fit
    candidates = calibration.report["candidates"]
    pairs = [label for label in candidates if not label.startswith(("calibrated", "lml("))
             and "calibrated sigmas" not in label]
    assert len(pairs) == 1 and " + " in pairs[0], candidates
    # Below 6 steps both LML fits (from an LML base, from a built-in's steps) finish: each
    # is a candidate, fitted ("calibrated ...") or, with no held-out gain, its start.
    fitted = calibration.report["fitted_from"]["lml"]
    assert len(fitted) == 2 and sum(label.removeprefix("calibrated ") in fitted
                                    for label in candidates) == 2
    assert sum("calibrated sigmas" in label for label in candidates) == 1  # sigma_fits
    chosen = calibration.report["chosen"]
    score = candidates[chosen]["heldout_score"]
    assert all(score <= c["heldout_score"] for c in candidates.values())
    assert not any(label.startswith("heun") for label in candidates)  # 2 calls per step


def test_it_beats_the_best_pair_on_fresh_noise(field_fit):
    model, schedules, calibration = field_fit
    x = noise(200, 99)
    ref = reference(model, x)
    best_pair = min(rms(function(model, x, sigmas.clone()), ref)
                    for name, function in SAMPLERS.items() if name != "heun"
                    for sigmas in schedules.values())
    error = rms(sample_lml_calibrated(model, x, schedules["karras"], calibration=calibration,
                                      samplers=SAMPLERS), ref)
    assert error < best_pair


def test_a_calibration_of_a_builtin_sampler_runs_that_sampler():
    model = MixtureDenoiser(dim=DIM, components=3, seed=2)
    sigmas = karras_sigmas(4).double()
    calibration = calibrate_sigmas(model, noise(16, 4), sigmas, plain_dpmpp_2m, iterations=3,
                                   reference_steps=16, sampler_name="dpmpp_2m")
    assert calibration.sampler == "dpmpp_2m" and calibration.corrections == []
    again = Calibration.from_json(calibration.to_json())
    assert again == calibration
    x = noise(3, 5)
    own = torch.tensor(calibration.sigmas, dtype=torch.float64)
    assert torch.equal(sample_lml_calibrated(model, x, sigmas, calibration=again,
                                             samplers={"dpmpp_2m": plain_dpmpp_2m}),
                       plain_dpmpp_2m(model, x, own))
    with pytest.raises(ValueError, match="runs the sampler 'dpmpp_2m'"):
        sample_lml_calibrated(model, x, sigmas, calibration=again,
                              samplers={"euler": plain_euler})


@pytest.mark.parametrize("sampler", [plain_euler, plain_dpmpp_2m])
def test_calibrated_sigmas_beat_the_schedule_they_start_from(sampler):
    """From Karras, which ends at the model's sigma_min: every timestep moves, the last one
    up from the floor too, and the sampler on them is closer to the converged solution on
    noise the fit never saw."""
    model = MixtureDenoiser(dim=DIM, components=4, spread=1.0, seed=3)
    sigmas = karras_sigmas(4).double()
    calibration = calibrate_sigmas(model, noise(32, 1), sigmas, sampler, iterations=10)
    assert calibration.report["calibrated"]
    assert calibration.sigmas[-2] > float(sigmas[-2]) * 1.01  # moved up from the floor
    x = noise(200, 98)
    ref = reference(model, x)
    own = torch.tensor(calibration.sigmas, dtype=torch.float64)
    assert rms(sampler(model, x, own), ref) < 0.9 * rms(sampler(model, x, sigmas), ref)


def test_flow_sigmas_stay_inside_the_models_range():
    model = MixtureDenoiser(dim=DIM, components=3, flow=True, seed=4, spread=1.0)
    sigmas = flow_sigmas(4).double()
    calibration = calibrate_sigmas(model, noise(16, 8, scale=1.0), sigmas, plain_euler,
                                   iterations=4, reference_floor=1e-3)
    assert calibration.sigmas[0] == float(sigmas[0])
    assert all(1 > s >= 1e-3 for s in calibration.sigmas[1:-1])


def test_schedules_are_checked():
    model = MixtureDenoiser(dim=DIM)
    sigmas = karras_sigmas(3).double()
    calibration = calibrate(model, noise(4, 1), sigmas, iterations=0, reference_steps=4,
                            schedules={"five": karras_sigmas(5), "low": karras_sigmas(3) * 0.1,
                                       "karras": sigmas})
    assert calibration.report["schedules_left_out"] == {
        "five": "5 steps, not 3", "low": "starts at sigma 8, not 80"}
    with pytest.raises(ValueError, match="no schedule has 3 steps from the noise's sigma 80"):
        calibrate(model, noise(4, 1), sigmas, schedules={"low": karras_sigmas(3) * 0.1})
    with pytest.raises(ValueError, match="sampler_name"):
        calibrate_sigmas(model, noise(4, 1), sigmas, lambda *a, **k: a[1])
    # A bad schedule is named: kl_optimal gives [nan, 0] at 1 step, which a caller computing a
    # sampler's own (fewer) steps may pass on.
    with pytest.raises(ValueError, match=r"calibrate: schedules\['bad'\] must decrease"):
        calibrate(model, noise(4, 1), sigmas, schedules={"bad": [80.0, float("nan"), 0.0]})
    with pytest.raises(ValueError, match=r"sampler_schedules\['euler'\]\['karras'\] must "
                                         r"decrease strictly to 0, got \[nan, 0.0\]"):
        calibrate(model, noise(4, 1), sigmas, schedules={"karras": sigmas},
                  samplers={"euler": plain_euler},
                  sampler_schedules={"euler": {"karras": [float("nan"), 0.0]}})


@pytest.mark.parametrize("count", [0, 2])
def test_sigma_fits_sets_how_many_samplers_get_timestep_fits(count):
    model = MixtureDenoiser(dim=DIM, components=3, seed=2)
    sigmas = karras_sigmas(3).double()
    calibration = calibrate(model, noise(8, 1), sigmas, schedules={"karras": sigmas},
                            samplers=SAMPLERS, sigma_fits=count, iterations=1,
                            reference_steps=8)
    fits = calibration.report["fitted_from"]["sigmas"]
    assert len(fits) == count and len({label.split(" + ")[0] for label in fits}) == count


def test_calibrated_sigmas_start_from_the_samplers_best_schedule():
    """With schedules, calibrate_sigmas measures the sampler on each and fits from the best;
    on the held-out noise the result is never worse than that schedule unchanged."""
    model = MixtureDenoiser(dim=DIM, components=4, spread=1.0, seed=3)
    schedules = {"karras": karras_sigmas(4).double(), "exponential": exponential_sigmas(4),
                 "uniform": uniform_sigmas(4)}
    calibration = calibrate_sigmas(model, noise(32, 1), schedules["karras"], plain_euler,
                                   schedules=schedules, iterations=6, sampler_name="euler")
    report = calibration.report
    (start,) = report["fitted_from"]["sigmas"]
    starts = {label: rms for label, rms in report["heldout_rms_bases"].items()}
    assert start in starts and start.startswith("euler + ")
    scores = [c["heldout_score"] for c in report["candidates"].values()]
    assert report["candidates"][report["chosen"]]["heldout_score"] == min(scores)


def test_a_sampler_that_cannot_run_is_left_out_with_its_reason():
    def broken(model, x, sigmas, extra_args=None, callback=None, disable=None):
        raise RuntimeError("both inputs should have same dtype")

    model = MixtureDenoiser(dim=DIM, components=3, seed=2)
    sigmas = karras_sigmas(3).double()
    said = []
    calibration = calibrate(model, noise(8, 1), sigmas, schedules={"karras": sigmas},
                            samplers={"broken": broken, "euler": plain_euler}, iterations=1,
                            reference_steps=8, log=said.append)
    assert any("broken + karras: cannot run here (both inputs should have same dtype)" in line
               for line in said)
    assert not any(label.startswith("broken") for label in calibration.report["candidates"])


def test_a_sampler_of_two_calls_per_step_competes_on_fewer_steps():
    """heun at 3 model calls is 2 steps (its last step one call): with its own 2-step sigmas
    it joins a 3-step field; a calibration of it keeps its own step count and round-trips."""
    model = MixtureDenoiser(dim=DIM, components=3, seed=2)
    sigmas = karras_sigmas(3).double()
    two = karras_sigmas(2).double()
    calibration = calibrate(model, noise(8, 1), sigmas, schedules={"karras": sigmas},
                            samplers={"heun": plain_heun},
                            sampler_schedules={"heun": {"karras": two}}, iterations=1,
                            reference_steps=8, base="euler", sigma_fits=1)
    assert "heun + karras" in calibration.report["fitted_from"]["sigmas"]
    # A calibration of heun on its own 2 steps, valid for the 3-step schedule.
    own = Calibration(sampler="heun", base="", sigmas=two.tolist(), corrections=[],
                      fitted_on=calibration.fitted_on)
    assert Calibration.from_json(own.to_json()) == own
    x = noise(3, 5)
    assert torch.equal(sample_lml_calibrated(model, x, sigmas, calibration=own,
                                             samplers={"heun": plain_heun}),
                       plain_heun(model, x, two))


def test_the_field_is_ranked_on_screen_rows_and_the_finalists_finish():
    """With screen_rows the whole field runs on that many fitting noises and only the
    ``finalists`` best of each kind on the rest: fewer evaluations, and a pair far ahead (the
    best pair) is still the one chosen as the unchanged candidate."""
    model = MixtureDenoiser(dim=DIM, components=4, spread=1.0, seed=3)
    schedules = {"karras": karras_sigmas(6).double(), "exponential": exponential_sigmas(6),
                 "uniform": uniform_sigmas(6)}
    opts = {"iterations": 0, "reference_steps": 16, "sigma_fits": 0}
    logs = []
    screened = calibrate(model, noise(24, 4), schedules["karras"], schedules=schedules,
                         samplers=SAMPLERS, screen_rows=3, finalists=1, log=logs.append,
                         **opts)
    whole = calibrate(model, noise(24, 4), schedules["karras"], schedules=schedules,
                      samplers=SAMPLERS, screen_rows=0, **opts)
    assert screened.report["model_evaluations"] < whole.report["model_evaluations"]
    line = next(text for text in logs if text.startswith("field:"))
    assert "ranked on 3 noises" in line
    pairs = lambda c: [k for k in c.report["candidates"] if not k.startswith(("calibrated",
                                                                                "lml("))]
    assert pairs(screened) == pairs(whole) and len(pairs(whole)) == 1
    # one finalist of each kind: LML base, LML on a built-in's steps, built-in
    assert len(screened.report["heldout_rms_bases"]) == 3


def test_an_lml_start_that_is_a_pairs_own_sampler_is_not_run_twice():
    """lml(euler) and the euler pair are one sampler: the field runs it once (one rollout of
    the fitting noise fewer than beside a sampler that differs from euler by 1e-3) and both
    starts get the same errors."""
    def slow_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return plain_euler(model, x, sigmas) * (1 + 1e-3)

    model = MixtureDenoiser(dim=DIM, components=3, seed=2)
    sigmas, x = karras_sigmas(4).double(), noise(16, 6)
    opts = {"iterations": 0, "reference_steps": 8, "base": "euler", "screen_rows": 0,
            "test": 0.25, "heldout": 0.25}
    costs, logs = {}, {}
    for name, sampler in (("euler", plain_euler), ("slow", slow_euler)):
        logs[name] = []
        calibration = calibrate(model, x, sigmas, samplers={name: sampler},
                                log=logs[name].append, **opts)
        costs[name] = calibration.report["model_evaluations"]
    assert costs["slow"] - costs["euler"] == 8 * 4  # the fitting rows x the steps
    assert any("lml(euler) + given = euler + given" in text for text in logs["euler"])
    assert not any("own samplers" in text for text in logs["slow"])


def test_a_builtin_whose_steps_need_corrections_past_the_limit_is_no_lml_start():
    """A one-call linear sampler that extrapolates with weight 2000, as lms does over
    linear_quadratic's first tiny steps: its steps as an LML start would need corrections past
    MAX_CORRECTION (a calibration could not save them), so it is no LML start; it still runs
    as itself.  (Such a start once stopped the whole calibration with a TypeError.)"""
    def wild(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in, old = x.new_ones([x.shape[0]]), None
        for i in range(len(sigmas) - 1):
            d = (x - model(x, sigmas[i] * s_in)) / sigmas[i]
            step = d if old is None else d + 2000 * (d - old)
            x, old = x + step * (sigmas[i + 1] - sigmas[i]), d
        return x

    model = MixtureDenoiser(dim=DIM, components=3, seed=2)
    said = []
    calibration = calibrate(model, noise(8, 1), karras_sigmas(3).double(),
                            samplers={"wild": wild, "euler": plain_euler}, iterations=0,
                            reference_steps=8, screen_rows=0, log=said.append)
    assert calibration.report["chosen"]
    assert any("wild + given" in line for line in said)
    assert not any("lml(wild)" in line for line in said)


def test_a_timestep_fit_reads_the_states_its_sampler_passes_through():
    """run_sampler(states=True) keeps the state at each sigma between the first and the last:
    Euler's states written out; for a sampler of two calls a step (Heun), the step's state,
    not the predicted one it also calls the model at."""
    model = MixtureDenoiser(dim=DIM, components=3, seed=2)
    sigmas = karras_sigmas(5).double().tolist()
    x = noise(6, 7)
    for sampler in (plain_euler, plain_heun):
        final, states = run_sampler(sampler, model, x, sigmas, {}, states=True)
        assert torch.equal(final, sampler(model, x, torch.tensor(sigmas, dtype=torch.float64)))
        for n in range(1, len(sigmas) - 1):  # the state at sigmas[n]: the first n steps' end
            assert torch.equal(states[n - 1], _state(sampler, model, x, sigmas, n))


def _state(sampler, model, x, sigmas, n):
    """The state after the first n steps of ``sampler`` on ``sigmas`` (its loop stopped)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(n):
        d = (x - model(x, sigmas[i] * s_in)) / sigmas[i]
        x_2 = x + d * (sigmas[i + 1] - sigmas[i])
        if sampler is plain_heun:
            d_2 = (x_2 - model(x_2, sigmas[i + 1] * s_in)) / sigmas[i + 1]
            x_2 = x + (d + d_2) / 2 * (sigmas[i + 1] - sigmas[i])
        x = x_2
    return x


@pytest.mark.parametrize("flow", [False, True])
def test_a_timestep_fit_has_the_lml_fits_objective(flow):
    """Euler's timesteps fitted as a black box (SigmaFit) and the LML fit on the euler base
    with no correction are one sampler: the same residual, the trajectory term included, at
    any timesteps; without the term only the final sample counts."""
    model = MixtureDenoiser(dim=DIM, components=3, flow=flow, seed=4, spread=1.0)
    sigmas = (flow_sigmas(5) if flow else karras_sigmas(5)).double()
    x = noise(8, 9, scale=1.0 if flow else 80.0)
    floor = 1e-3 if flow else 0.002
    ref = Reference(Evaluator(model, {}, torch.float64), x,
                    reference_grid(float(sigmas[0]), floor, 32, flow), flow)
    lml = Fit(Evaluator(model, {}, torch.float64), sigmas.tolist(), "euler", 1, True, flow,
              floor, trajectory=1.0)
    black_box = SigmaFit(plain_euler, model, sigmas.tolist(), flow, floor, trajectory=1.0)
    theta = torch.zeros(lml.size, dtype=torch.float64)
    theta[:lml.n_time] = torch.tensor([0.2, -0.1, 0.1, -0.3])  # moved, the last one up
    plan = lml.plan(theta)
    sig = black_box.plan(theta[:lml.n_time])
    assert sig == plan[0]
    expected = lml.residual(lml.rollout(plan, x), plan[0], ref)
    got = black_box.residual(black_box.outcome(sig, x), sig, ref)
    assert got.numel() == (len(sigmas) - 1) * x.numel()  # the final sample and N - 1 states
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12)
    final_only = SigmaFit(plain_euler, model, sigmas.tolist(), flow, floor)
    assert final_only.residual(final_only.outcome(sig, x), sig, ref).numel() == x.numel()


@pytest.mark.parametrize("trajectory", [0.0, 1.0])
def test_a_rollouts_errors_are_its_final_rms_and_its_share_of_the_objective(trajectory):
    """rollout_errors: the final sample's per-sample RMS, and each noise's share of the
    objective (its mean square over the noises is the loss; the final RMS without the
    trajectory term; the fit's per-sample weights divided out), for the LML fit and a
    timestep fit alike."""
    model = MixtureDenoiser(dim=DIM, components=3, seed=4, spread=1.0)
    sigmas = karras_sigmas(5).double().tolist()
    x = noise(8, 9)
    ref = Reference(Evaluator(model, {}, torch.float64), x, reference_grid(80.0, 0.002, 32,
                                                                            False), False)
    for fit in (Fit(Evaluator(model, {}, torch.float64), sigmas, "euler", 1, True, False,
                    0.002, trajectory=trajectory),
                SigmaFit(plain_euler, model, sigmas, False, 0.002, trajectory=trajectory)):
        theta = torch.zeros(fit.size, dtype=torch.float64)
        theta[:4] = torch.tensor([0.2, -0.1, 0.1, -0.3])
        final, objective = fit.rollout_errors(theta, x, ref)
        assert torch.allclose(final, fit.final_errors(theta, x, ref), rtol=1e-12)
        loss = fit.loss(fit.plan(theta), x, ref)
        assert float(objective.pow(2).mean()) == pytest.approx(loss, rel=1e-9)
        if trajectory == 0:
            assert torch.allclose(objective, final, rtol=1e-9)
        else:
            assert bool((objective > final).all())  # every state strays somewhat
        ref.weights = torch.linspace(0.2, 1.0, 8, dtype=torch.float64)
        assert torch.allclose(fit.rollout_errors(theta, x, ref)[1], objective, rtol=1e-9)
        ref.weights = None


class _Scored:
    """A start whose per-sample (final error, objective) are given: for the field's ranking."""

    size = 0

    def __init__(self, final, objective):
        self.final, self.objective = final, objective

    def rollout_errors(self, theta, x, reference):
        rows = x[:, 0].long()  # each noise row carries its index
        return self.final[rows], self.objective[rows]


def test_the_field_ranks_the_starts_by_the_objective_not_the_final_error():
    """Of two starts, the one whose final errors are lower but whose states stray further on
    the way (a larger objective) ranks behind: the states show, on a few noises, the schedule
    that sends more noises to another mode."""
    from types import SimpleNamespace

    from lml_core.field import measured_starts

    rows = 16
    x = torch.arange(rows, dtype=torch.float64)[:, None]
    setup = SimpleNamespace(opts={"screen_rows": 8, "finalists": 1}, x_fit=x,
                            ref_fit=SimpleNamespace(subset=lambda part: None),
                            counted=SimpleNamespace(rows=0), say=lambda text: None)
    ones = torch.ones(rows, dtype=torch.float64)
    starts = {"low final + a": _Scored(0.5 * ones, 3.0 * ones),
              "low objective + a": _Scored(1.0 * ones, 1.5 * ones),
              "worse + a": _Scored(2.0 * ones, 4.0 * ones)}
    measured = measured_starts(setup, starts, 4, one_call=False)
    assert list(measured) == ["low objective + a"]
    final, objective = measured["low objective + a"]
    assert torch.equal(final, ones) and torch.equal(objective, 1.5 * ones)
