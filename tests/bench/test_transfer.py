"""bench.transfer (issue 25 item 7): a model that guides every row to one class, the best pair
the minimum over every pair it ran, and a tiny run's JSON."""

import json

import torch

from bench import transfer
from bench.digits import CFGDigitsModel, RowLabelledDigitsModel, load_or_train, with_labels
from bench.suite import Problem, run_sampler


def test_the_class_model_guides_every_row_to_its_class():
    net, _ = load_or_train(lambda _: None)
    cfg_model = CFGDigitsModel(net, False, 3.0)
    x = torch.randn(10, 64, generator=torch.Generator().manual_seed(0)) * 20
    sigma = torch.tensor([20.0])
    for label in (0, 7):
        ours = transfer.ClassDigitsModel(cfg_model, label)(x, sigma)
        expected = cfg_model.guided(x, sigma, torch.full((10,), label))
        assert torch.equal(ours, expected)
        # row ``label`` of the row-i-is-class-i-mod-10 model is guided to that class too
        assert torch.allclose(ours[label], cfg_model(x, sigma)[label], atol=1e-5)
        # and the labelled calibration rows carry that class to RowLabelledDigitsModel
        labelled = RowLabelledDigitsModel(cfg_model)(transfer.with_class(x, label), sigma)
        assert torch.allclose(labelled[:, :-2], ours, atol=1e-5)
    # the all-class labels are the benchmark's: row i of class i mod 10
    both = RowLabelledDigitsModel(cfg_model)(with_labels(x), sigma)
    assert torch.allclose(both[:, :-2], cfg_model(x, sigma), atol=1e-5)


def test_class_test_rows_are_that_class_rows_of_the_benchmark_noise():
    net, _ = load_or_train(lambda _: None)
    noise = transfer.test_noise(30)
    problem = transfer.test_problem(net, 3.0, 7, noise, 8, lambda _: None)
    assert problem.x_start.shape[0] == 3
    assert torch.equal(problem.x_start, Problem("x", "karras", problem.model, noise[[7, 17, 27]],
                                                8, log=lambda _: None).x_start)


def test_the_best_pair_is_the_minimum_over_the_pairs_it_ran():
    net, _ = load_or_train(lambda _: None)
    problem = transfer.test_problem(net, 3.0, None, transfer.test_noise(10), 16,
                                    lambda _: None)
    samplers, schedulers = ["euler", "ipndm_v", "dpm_2"], ["karras", "simple"]
    best = transfer.best_pair(problem, [4], samplers, schedulers)[4]
    scores = {}
    for sampler in samplers:
        for scheduler in schedulers:
            x, calls = run_sampler(problem.model, problem.x_start, "karras", sampler, 4,
                                   scheduler=scheduler)
            assert calls <= 4  # dpm_2: 2 steps at 2 calls each, KSampler's discard rule
            scores[(sampler, scheduler)] = float(((x.double() - problem.reference.double())
                                                  ** 2).mean().sqrt())
    assert best["pairs"] == len(scores)
    low = min(scores, key=scores.get)
    assert (best["sampler"], best["scheduler"]) == low
    assert abs(best["rms"] - scores[low]) <= 1e-6 * scores[low]


def test_a_quick_run_writes_the_json(tmp_path):
    data = transfer.main(["--quick", "--out", str(tmp_path), "--test-samples", "10", "--seeds", "2",
                          "--cfgs", "6", "--options", '{"iterations": 1}',
                          "--samplers", "euler", "ipndm_v", "--schedulers", "karras"])
    written = json.loads((tmp_path / "transfer.json").read_text())
    assert written["meta"]["nfes"] == [4] and written["meta"]["seeds"] == 2
    assert set(written) >= {"meta", "fits_a", "best_pairs", "classes_summary", "cfg_summary",
                            "classes", "cfg"}
    assert written["fits_a"] == ["class 7", "all classes"]
    # every class scored by both fits and both seeds; the cfg-6 test by the cfg-3 and cfg-6 fits
    assert len(written["classes"]) == 2 * 10 * 2
    assert {(r["fit_cfg"], r["test_cfg"]) for r in written["cfg"]} == {(3.0, 3.0), (3.0, 6.0),
                                                                     (6.0, 6.0)}
    for r in written["classes"] + written["cfg"]:
        assert r["ratio"] == r["rms"] / r["best_rms"] and r["model_calls"] <= 4
    s = written["classes_summary"][0]
    assert s["class7"]["worst"] >= s["class7"]["median"] and s["others_worst"] >= \
        s["others_median"]
    assert (tmp_path / "transfer.md").read_text().startswith("# Does a calibration transfer?")
    assert data["meta"] == written["meta"]
