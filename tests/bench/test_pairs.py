"""The field is pairs (bench.pairs): every host sampler with every host scheduler, the sigmas the
host's KSampler would give, every scheduler placed, and the best pair the minimum over pairs."""

import math

import comfy.samplers
import pytest
import torch

from bench import field, pairs, report
from bench.exact import MixtureModel, mixture_2d
from bench.suite import Problem, nfe_of, run_sampler, sigmas_for, steps_for_nfe


def ksampler_sigmas(name, scheduler, flow, steps):
    """What the host's own KSampler computes for a workflow's sampler, scheduler and steps."""
    model = field.HostModel(lambda x, s, **_: x, flow)
    return comfy.samplers.KSampler(model, steps, "cpu", sampler=name, scheduler=scheduler).sigmas


# Plain and discard-penultimate samplers, schedulers from the model's own table (simple, beta,
# normal, ddim_uniform) and from sigma_min / sigma_max only (karras, kl_optimal).
CASES = [("euler", "simple"), ("uni_pc", "kl_optimal"), ("dpm_2", "beta"), ("heun", "karras"),
         ("uni_pc_bh2", "ddim_uniform"), ("ipndm_v", "normal"), ("dpm_2_ancestral", "sgm_uniform")]


@pytest.mark.parametrize("flow", [False, True])
@pytest.mark.parametrize("name,scheduler", CASES)
def test_pair_sigmas_are_the_hosts_ksampler_sigmas(name, scheduler, flow):
    kind = "flow" if flow else "karras"
    for steps in (4, 7):
        ours = sigmas_for(name, kind, steps, scheduler)
        assert torch.equal(ours, ksampler_sigmas(name, scheduler, flow, steps).float())
        # and that is calculate_sigmas with the discard rule, on the problem's model_sampling
        raw = comfy.samplers.calculate_sigmas(field.model_sampling(flow), scheduler,
                                              steps + field.discards_penultimate(name))
        if field.discards_penultimate(name):
            raw = torch.cat([raw[:-2], raw[-1:]])
        assert torch.equal(ours, raw.float()) and len(ours) == steps + 1


def test_the_hosts_karras_is_the_fixed_karras_schedule():
    # Why a ratio to the best sampler on Karras bounds the ratio to the best pair.
    for steps in (4, 10, 30):
        assert torch.allclose(sigmas_for("euler", "karras", steps, "karras"),
                              sigmas_for("euler", "karras", steps), rtol=1e-5, atol=0)


def test_every_host_scheduler_is_placed():
    names = list(comfy.samplers.KSampler.SCHEDULERS)
    assert names == field.scheduler_names() and len(names) >= 7
    for flow in (False, True):
        placed = pairs.placements(flow)
        assert list(placed) == names
        assert all(how == "run" or how.startswith(("run, not at ", "not run: "))
                   for how in placed.values()), placed
        assert pairs.runnable(flow, [4, 10]) == [n for n, how in placed.items()
                                                 if not how.startswith("not run")]


def test_a_scheduler_that_cannot_run_is_reported_not_dropped(monkeypatch):
    host_calculate = comfy.samplers.calculate_sigmas

    def calculate_sigmas(model_sampling, scheduler, steps):
        if scheduler == "from_the_future":
            raise NotImplementedError("needs the model's config")
        return host_calculate(model_sampling, scheduler, steps)

    monkeypatch.setattr(comfy.samplers, "calculate_sigmas", calculate_sigmas)
    monkeypatch.setattr(comfy.samplers.KSampler, "SCHEDULERS",
                        [*comfy.samplers.KSampler.SCHEDULERS, "from_the_future"])
    placed = pairs.placements(False, range(1, 5))
    assert placed["from_the_future"] == ("not run: NotImplementedError: needs the model's "
                                         "config")
    assert "from_the_future" not in pairs.runnable(False, [4]) and "karras" in placed


def _problem(kind, n=48):
    noise = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    return Problem("mix2d", kind, MixtureModel(mixture_2d(), kind == "flow"), noise, 24,
                   log=lambda _: None)


@pytest.mark.parametrize("name,scheduler", [("heun", "beta"), ("uni_pc", "ddim_uniform"),
                                            ("dpmpp_2m", "linear_quadratic")])
def test_pairs_count_model_calls_and_start_at_their_first_sigma(name, scheduler):
    problem = _problem("karras", 4)
    calls_seen = []

    def model(x, sigma, **extra):
        if not calls_seen:
            calls_seen.append(float(x.std() / problem.x_start.std()))
        calls_seen.append(1)
        return problem.model(x, sigma, **extra)

    x, calls = run_sampler(model, problem.x_start, "karras", name, 8, scheduler=scheduler)
    steps = steps_for_nfe(name, 8, scheduler, "karras")
    assert calls == nfe_of(name, steps, scheduler, "karras") <= 8
    # KSampler scales the noise by the schedule's first sigma (ddim_uniform starts below 80)
    first = float(sigmas_for(name, "karras", steps, scheduler)[0])
    assert calls_seen[0] == pytest.approx(first / 80.0, rel=1e-5)


@pytest.mark.parametrize("kind", ["karras", "flow"])
def test_best_pair_is_the_minimum_over_pairs(kind):
    problem = _problem(kind)
    samplers = ("euler", "ipndm_v", "uni_pc")
    # with the whole problem as the subset, the selection's scores are the final rows' values
    rows, selection, failures = pairs.best_pairs(problem, samplers, [5], len(problem.x_start),
                                                 finalists=2, log=lambda _: None)
    assert not failures and len(rows) == 2
    (record,) = selection
    assert record["pairs"] == len(samplers) * len(pairs.runnable(problem.flow, [5]))
    scores = [score for _, _, score in record["top"]]
    assert scores == sorted(scores)
    winner = report.best(rows, "pair", "rms")
    assert (winner["sampler"], winner["scheduler"]) == tuple(record["top"][0][:2])
    assert winner["rms"] == pytest.approx(scores[0], rel=1e-12)
    # the selection ran every sample: its rows are the final ones, as evaluate writes them
    from bench.suite import evaluate

    for row in rows:
        again, = evaluate(problem, {row["sampler"]: (row["sampler"], {})}, [5],
                          log=lambda _: None, scheduler=row["scheduler"])
        errors = ("rms", "median")
        assert {k: v for k, v in again.items() if k not in errors} == {
            k: v for k, v in row.items() if k not in errors}
        assert [again[k] for k in errors] == pytest.approx([row[k] for k in errors], rel=1e-9)
    # the pair rows carry their scheduler; LML, CFG++, fixed-schedule and NaN rows never win
    others = [{**winner, "sampler": "lml_euler", "scheduler": None, "rms": 0.0},
              {**winner, "sampler": "euler_cfg_pp", "rms": 0.0},
              {**winner, "sampler": "ipndm", "scheduler": None, "rms": 0.0},
              {**winner, "sampler": "deis", "non_finite": 3, "rms": 0.0}]
    assert report.best(rows + others, "pair", "rms") is winner
    assert report.label(winner) == f"{winner['sampler']} + {winner['scheduler']}"


def test_pair_schedules_give_one_call_per_step_samplers_every_scheduler():
    problem = _problem("flow", 4)
    schedules = pairs.pair_schedules(problem, 6)
    assert list(schedules) == pairs.runnable(True, [6])
    for scheduler, sigmas in schedules.items():
        steps = steps_for_nfe("euler", 6, scheduler, "flow")
        assert torch.equal(sigmas.float(), ksampler_sigmas("euler", scheduler, True, steps))
        # 6 steps, except where the host's scheduler has no 6-step schedule: ddim_uniform
        # gives 7 steps when asked for 6 and 5 when asked for 5
        assert sigmas.dtype == torch.float64 and len(sigmas) == (6 if scheduler == "ddim_uniform"
                                                                 else 7)


@pytest.mark.parametrize("kind", ["karras", "flow"])
def test_every_pair_makes_the_model_calls_its_steps_were_chosen_for(kind):
    # nfe_of reuses the fixed schedule's count for a scheduler whose sigmas have its length and
    # zeros; the calls each pair really makes must agree, for every sampler and scheduler.
    problem = _problem(kind, 2)
    for name in field.DETERMINISTIC + field.STOCHASTIC:
        for scheduler in pairs.runnable(problem.flow, [6]):
            _, calls = run_sampler(problem.model, problem.x_start, kind, name, 6,
                                   scheduler=scheduler)
            steps = steps_for_nfe(name, 6, scheduler, kind)
            assert calls == nfe_of(name, steps, scheduler, kind) <= 6, (name, scheduler)


def test_split_choice_scores_the_pair_chosen_on_the_other_half():
    from bench.pair_check import split_choice

    def row(*squared):
        return {"squared": torch.tensor(squared, dtype=torch.float64)}

    # A is best on the even rows (RMS 1 against 2), B on the odd rows (2 against 10): each
    # half's choice scores 5x and 2x the best pair on the other half.
    lucky, steady = row(1.0, 100.0, 1.0, 100.0), row(4.0, 4.0, 4.0, 4.0)
    assert split_choice([lucky, steady]) == pytest.approx(math.sqrt(5.0 * 2.0))
    # One pair best on both halves: no optimism.
    assert split_choice([row(1.0, 1.0, 2.0, 2.0), steady]) == 1.0


def test_readmes_field_summary_is_the_ratio_to_the_best_pair_per_nfe():
    from bench import results_page

    def row(data, sampler, nfe, rms, scheduler=None):
        return {"data": data, "schedule": "karras", "sampler": sampler, "scheduler": scheduler,
                "nfe_budget": nfe, "nfe": nfe, "rms": rms}

    det = []
    for data, lml, pair, default in (("a", 0.5, 1.0, 2.0), ("b", 4.0, 1.0, 1.0)):
        det += [row(data, "lml_euler", 4, lml), row(data, "euler", 4, default),
                row(data, "ipndm", 4, pair, "kl_optimal"), row(data, "ipndm", 4, 9.0, "beta"),
                # above the pairs' NFEs only the fixed schedule ran: a bound
                row(data, "lml_euler", 20, lml), row(data, "euler", 20, default)]
    meta = {"pair_nfes": [4], "pair_stochastic_nfes": [], "wall_seconds": 10.0,
            "cpu_seconds": 9.0, "stage_seconds": {"pairs": 3.0}}
    lines = results_page.readme_lines(det, [], meta)
    # LML over the best pair: sqrt(0.5 * 4) at 4 NFE; over the fixed schedule's best there
    # sqrt(0.25 * 4); at 20 NFE only the bound sqrt(0.25 * 4)
    assert lines[2] == (f"| deterministic (RMS), vs the best pair | **{math.sqrt(2):.2f}** | "
                        ">= 1.00 |")
    assert lines[3] == "| deterministic, vs the best on one schedule | 1.00 | 1.00 |"
    text = "\n".join(lines)
    assert "the best pair is 0.71-0.71x the best sampler" in text  # sqrt(0.5 * 1)
    assert "`kl_optimal` (2 of 2 deterministic points)" in text
    assert "at 1 of 2 deterministic points (a/karras 4 NFE 0.50)." in text
    # a run without pairs (bench --quick at other budgets) still says how long it ran
    fixed = [r for r in det if r["scheduler"] is None]
    lines = results_page.readme_lines(fixed, [], meta)
    assert lines[-1].startswith("Run: `bash scripts/bench.sh` (10 s wall")


def test_readmes_wrapped_summary_is_each_lml_sampler_over_its_solver():
    from bench import results_page

    def row(data, sampler, nfe, rms):
        return {"data": data, "schedule": "flow", "sampler": sampler, "scheduler": None,
                "nfe_budget": nfe, "nfe": nfe, "rms": rms}

    det = [row("a", "lml_euler", 4, 0.5), row("a", "euler", 4, 1.0),
           row("a", "lml_euler", 8, 2.0), row("a", "euler", 8, 1.0),
           row("b", "lml_euler", 4, 1.01), row("b", "euler", 4, 1.0)]
    lines = results_page.wrapped_lines(det, [])
    assert len(lines) == 3  # header, rule, lml_euler (no lml_dpmpp_2m rows)
    assert lines[2] == (f"| `lml_euler` / `euler` | {(0.5 * 2.0 * 1.01) ** (1 / 3):.2f} | "
                        f"{math.sqrt(0.5 * 1.01):.2f} at 4, 2.00 at 8 | 2.00 (a/flow, 8) | "
                        "2 of 3 points |")
