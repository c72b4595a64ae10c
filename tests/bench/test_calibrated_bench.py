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
    rows += calibrated.calibrated_rows(problem, [5], 16, {"iterations": 3}, lambda _: None)
    (point,) = calibrated.comparison(rows)
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
    from bench.calibrated import draw_lines

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
