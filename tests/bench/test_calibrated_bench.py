"""The calibrated sampler against the host: with zero corrections it is ComfyUI's own euler,
ipndm and ipndm_v (the same method), on both schedules."""

import pytest
import torch

from bench import field
from bench.common import schedule
from bench.exact import MixtureModel, mixture_64d
from lml_core import Calibration, sample_lml_calibrated


@pytest.mark.parametrize("kind", ["karras", "flow"])
@pytest.mark.parametrize("steps", [3, 6, 10])
@pytest.mark.parametrize("base", ["euler", "ipndm", "ipndm_v"])
def test_zero_corrections_reproduce_the_hosts_sampler(kind, steps, base):
    flow = kind == "flow"
    model = MixtureModel(mixture_64d(), flow)
    x = torch.randn(8, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x * (1.0 if flow else 80.0)
    sigmas = schedule(kind, steps).double()
    host = field.host_function(base)(field.HostModel(model, flow), x.clone(), sigmas.clone(),
                                     disable=True)
    zero = Calibration(base=base, sigmas=sigmas.tolist(), corrections=[[0.0]] * steps,
                       fitted_on={"steps": steps, "sigma_max": float(sigmas[0]),
                                  "sigma_min": float(sigmas[-2]), "model_kind": "unknown",
                                  "sigmas": sigmas.tolist(), "latent_shape": [64]})
    ours = sample_lml_calibrated(field.HostModel(model, flow), x.clone(), sigmas,
                                 calibration=zero)
    # The same arithmetic up to the order of float64 additions.
    assert torch.allclose(ours, host, rtol=0, atol=1e-12 * float(host.abs().max()))


def test_calibrated_rows_are_scored_on_noise_they_were_not_fitted_on():
    """bench.calibrated fits on its own noise (CALIBRATION_SEED) and scores the benchmark's
    noise against the same reference as the field; the comparison names the best (sampler,
    scheduler) pair and keeps the ratio to the best sampler on the fixed schedule."""
    from bench import calibrated, pairs
    from bench.suite import Problem, evaluate

    model = MixtureModel(mixture_64d(), False)
    noise = torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    problem = Problem("mix64d", "karras", model, noise, ref_steps=24, log=lambda _: None)
    rows = evaluate(problem, {"euler": ("euler", {}), "ipndm_v": ("ipndm_v", {})}, [5],
                    log=lambda _: None)
    rows += pairs.best_pairs(problem, ("euler", "ipndm_v"), [5], 16, log=lambda _: None)[0]
    errors = {}
    rows += calibrated.calibrated_rows(problem, [5], 16, {"iterations": 3}, lambda _: None,
                                       errors=errors)
    (point,) = calibrated.comparison(rows)
    # the interval of the ratio over resamples of the test samples holds the ratio itself
    calibrated.add_intervals([point], {("mix64d", "karras"): problem}, errors)
    low, high = point["ratio_interval"]
    assert low < point["ratio"] < high
    pair_rows = [r for r in rows if r.get("scheduler")]
    best = min(pair_rows, key=lambda r: r["rms"])
    assert point["best"] == f"{best['sampler']} + {best['scheduler']}" and point["nfe"] == 5
    assert (point["best_sampler"], point["best_scheduler"]) == (best["sampler"],
                                                                best["scheduler"])
    assert point["best_default"] in ("euler", "ipndm_v")
    cal = rows[-1]
    assert cal["nfe"] == 5  # one model call per step, counted on the sampling run
    assert cal["cost"]["evaluations"] > cal["cost"]["model_calls"] > 0
    assert point["ratio"] == pytest.approx(cal["rms"] / best["rms"])
    default = [r for r in rows if r["sampler"] == point["best_default"] and not r["scheduler"]]
    assert point["ratio_default"] == pytest.approx(cal["rms"] / default[0]["rms"])
    assert cal["rms"] < default[0]["rms"]


def test_two_draws_of_the_test_noise_name_the_points_that_lose_on_one_only():
    from bench.calibrated_page import draw_lines

    def point(nfe, ratio, worst, best="euler + karras"):
        return {"data": "mix2d", "schedule": "karras", "nfe": nfe, "ratio": ratio,
                "ratio_max": worst, "best": best}
    first = [point(4, 1.05, 1.2), point(6, 0.5, 0.6), point(8, 1.3, 1.4)]
    second = [point(4, 0.9, 1.0, "deis + beta"), point(6, 0.5, 0.6), point(8, 1.1, 1.2)]
    lines = draw_lines(first, second)
    assert lines[2].split(" | ")[1:6] == ["3", "0.880", "1.003", "2", "2"]
    assert lines[3].split(" | ")[4:7] == ["1", "1", "2 of 3 |"]
    assert "both draws (first / second): mix2d/karras 8 NFE (1.30 / 1.10)." in lines[-1]
    assert lines[-1].endswith("On one draw only: mix2d/karras 4 NFE (1.05 / 0.90).")


def test_the_bootstrap_interval_is_wide_where_a_few_samples_carry_the_rms():
    from bench.calibrated_page import interval_lines
    from bench.common import bootstrap_ratio

    best = torch.full((400,), 1.0, dtype=torch.float64)
    assert bootstrap_ratio([best.clone()], best) == pytest.approx([1.0, 1.0])
    typical = torch.full((400,), 0.25, dtype=torch.float64)  # ratio 0.5 everywhere
    low, high = bootstrap_ratio([typical], best)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)
    tail = typical.clone()
    tail[:2] = 200.0  # two samples of 400 in another mode: RMS ratio 1.12, 0.50 without them
    low, high = bootstrap_ratio([tail], best)
    assert low < 0.9 and high > 1.2
    # the median over seeds: two seeds at 0.5 outvote one with the tail
    low, high = bootstrap_ratio([typical, typical, tail], best)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)
    points = [{"data": "mix2d", "schedule": "flow", "nfe": 4, "ratio": 1.06,
               "ratio_interval": [low, 1.4]},
              {"data": "mix2d", "schedule": "flow", "nfe": 5, "ratio": 1.3,
               "ratio_interval": [1.1, 1.5]},
              {"data": "mix2d", "schedule": "flow", "nfe": 6, "ratio": 0.5,
               "ratio_interval": [0.4, 0.6]}]
    line = interval_lines(points)[1]
    assert "1 of 3 points are below 1.02 over the whole interval" in line
    assert "of the 2 with the median above 1.02, 1 are above it over the whole interval " \
        "(mix2d/flow 5 NFE 1.30 (1.10-1.50))" in line
    assert line.endswith("(mix2d/flow 4 NFE 1.06 (0.50-1.40)).")


def test_the_tail_record_counts_the_far_samples_and_their_share():
    from bench.calibrated import restricted
    from bench.tail import described

    errors = torch.tensor([0.1, 0.1, 0.1, 2.0], dtype=torch.float64)
    record = described(errors, far_at=1.0)
    assert record["far"] == 1 and record["far_rows"] == [3]
    assert record["far_share"] == pytest.approx(4.0 / 4.03)
    assert record["median"] == pytest.approx(0.1)
    schedules, samplers, own = restricted(({"karras": 1, "beta": 2}, {"euler": 3},
                                           {"dpm_2": {"karras": 4, "beta": 5}}), ["beta"])
    assert (schedules, samplers, own) == ({"beta": 2}, {"euler": 3}, {"dpm_2": {"beta": 5}})


def test_the_tail_page_ranks_the_schedulers_by_their_best_sampler():
    """by_scheduler: per scheduler the sampler of the lowest RMS (not the fewest far samples),
    its far samples, and the fewest far samples of any sampler on that scheduler; best first."""
    from bench.tail import by_scheduler, markdown

    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    errors = {("euler", "karras"): t(0.1, 0.1, 3.0, 3.0), ("deis", "karras"): t(0.5, 0.5, 0.5, 2.0),
              ("euler", "kl_optimal"): t(0.2, 0.2, 0.2, 0.2)}
    rows = by_scheduler(errors, far_at=1.0)
    assert [r["scheduler"] for r in rows] == ["kl_optimal", "karras"]
    assert rows[0]["sampler"] == "euler" and rows[0]["far"] == 0 and rows[0]["far_share"] == 0
    karras = rows[1]
    assert karras["sampler"] == "deis" and karras["far"] == 1 and karras["fewest_far"] == 1
    assert karras["rms"] == pytest.approx((4.75 / 4) ** 0.5)
    record = {"data": "mix2d", "schedule": "karras", "nfe": 10, "samples": 4, "far_at": 1.0,
              "schedulers": None, "best_pair": {"pair": "euler + kl_optimal", "rms": 0.2,
                                                "median": 0.2, "far": 0, "far_share": 0.0},
              "seeds": [], "median_ratio": 1.0, "by_scheduler": rows}
    assert "| karras | deis | 1.0897 | 0.5000 | 1 | 84% | 1 |" in markdown(record, "cmd", 1.0)


def test_the_page_names_the_options_a_run_was_given(tmp_path):
    """A run with --options says so where the committed run says "the default options", under
    its own --name; a run whose points have no interval does not head a column with one."""
    import json
    from pathlib import Path

    from bench import calibrated_page

    data = json.loads((Path(__file__).resolve().parents[2] / "docs" / "bench" /
                       "calibrated.json").read_text())
    meta = {**data["meta"], "options_given": {"linear_fits": True, "jacobian_rows": 0}}
    calibrated_page.write_markdown(tmp_path, data["rows"], data["points"], meta, "other")
    text = (tmp_path / "other.md").read_text()
    assert ('`lml_core.calibrate` with the options `{"linear_fits": true, "jacobian_rows": 0}` '
            "on 32 float32 noises") in text
    assert "ratio (median; 90% interval over the test samples)" in text
    bare = [{k: v for k, v in p.items() if k != "ratio_interval"} for p in data["points"]]
    calibrated_page.write_markdown(tmp_path, data["rows"], bare, data["meta"])
    text = (tmp_path / "calibrated.md").read_text()
    assert "with the default options on 32" in text and "| ratio (median) |" in text
