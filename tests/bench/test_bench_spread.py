"""bench.calibrated's spread over calibration seeds (median and worst ratio, cost ranges, the
summary), and bench.rss / bench.memory's measurements (a known allocation, a tiny case)."""

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import calibrated, calibrated_page, memory
from bench.rss import MB, PeakRSS
from lml_core import CALIBRATE_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]


def seed(index, value, seconds, evaluations, peak, base="ipndm_v"):
    return {"seed": index, "nfe": 5, "rms": value, "median": value / 2, "base": base,
            "runs": "" if base else "uni_pc", "chosen": f"calibrated lml({base})",
            "calibrated": True, "iterations": 3, "heldout_rms": 0.1, "heldout_rms_base": 0.2,
            "cost": {"seconds": seconds, "model_calls": evaluations // 10,
                     "evaluations": evaluations, "peak_rss_mb": peak}}


def field_rows(data, best_pair, best_default, nfe=5):
    common = {"data": data, "schedule": "karras", "nfe_budget": nfe, "nfe": nfe}
    return [{**common, "sampler": "uni_pc", "scheduler": "kl_optimal", "rms": best_pair},
            {**common, "sampler": "deis", "scheduler": "beta", "rms": best_pair * 1.5},
            {**common, "sampler": "euler", "scheduler": None, "rms": best_default},
            {**common, "sampler": "ipndm_v", "scheduler": None, "rms": best_default * 2}]


def test_median_and_worst_over_seeds_from_known_inputs():
    problem = SimpleNamespace(name="mix2d", kind="karras")
    seeds = [seed(0, 0.10, 2.0, 1000, 50.0), seed(1, 0.30, 4.0, 3000, 70.0),
             seed(2, 0.20, 3.0, 2000, 40.0), seed(3, 0.50, 1.0, 5000, 90.0),
             seed(4, 0.22, 5.0, 4000, 60.0, base="")]
    row = calibrated.seeds_row(problem, 5, seeds)
    assert row["sampler"] == calibrated.LABEL and row["seeds"] == seeds
    assert row["rms"] == 0.22 and row["rms_max"] == 0.5 and row["median_seed"] == 4
    assert row["median"] == 0.11
    cost = row["cost"]
    assert (cost["seconds"], cost["seconds_min"], cost["seconds_max"]) == (3.0, 1.0, 5.0)
    assert (cost["evaluations"], cost["evaluations_min"], cost["evaluations_max"]) == (
        3000, 1000, 5000)
    assert (cost["peak_rss_mb"], cost["peak_rss_mb_max"]) == (60.0, 90.0)
    assert cost["model_calls"] == 300

    (point,) = calibrated.comparison(field_rows("mix2d", 0.2, 0.4) + [row])
    assert point["best"] == "uni_pc + kl_optimal" and point["best_default"] == "euler"
    assert point["seeds"] == 5
    assert point["ratio"] == pytest.approx(1.1) and point["ratio_max"] == pytest.approx(2.5)
    assert point["ratios"] == pytest.approx([0.5, 1.5, 1.0, 2.5, 1.1])
    assert point["calibrated"] == 0.22 and point["calibrated_max"] == 0.5
    assert point["ratio_default"] == pytest.approx(0.55)
    assert point["chosen_bases"] == "ipndm_v x4, uni_pc x1"
    assert point["cost"] == cost

    # An even count: the median is the mean of the middle two; the row is the lower one's.
    row = calibrated.seeds_row(problem, 5, seeds[:4])
    assert row["rms"] == pytest.approx(0.25) and row["median_seed"] == 2
    (point,) = calibrated.comparison(field_rows("mix2d", 0.2, 0.4) + [row])
    assert point["ratio"] == pytest.approx(1.25) and point["ratio_max"] == pytest.approx(2.5)


def test_summary_per_family_from_known_points():
    def point(data, ratio, worst, default=0.5, nfe=5):
        return {"data": data, "schedule": "karras", "nfe": nfe, "ratio": ratio,
                "ratio_max": worst, "ratio_default": default}

    points = [point("mix2d", 1.0, 1.2), point("mix64d", 1.03, 1.05),
              point("sub3072d", 0.5, 2.0, nfe=8), point("digits cfg 1", 0.4, 0.9),
              point("digits cfg 3", 0.8, 1.15)]
    groups = calibrated_page.families(points)
    assert list(groups) == ["exact mixtures (Karras + flow)", "digits cfg 1 (Karras + flow)",
                            "digits cfg 3 (Karras + flow)"]
    n = calibrated_page.summary_numbers(groups["exact mixtures (Karras + flow)"])
    assert n["points"] == 3
    assert n["median"] == pytest.approx((1.0 * 1.03 * 0.5) ** (1 / 3))
    assert n["worst"] == pytest.approx((1.2 * 1.05 * 2.0) ** (1 / 3))
    assert n["worst_ratio"] == 2.0 and n["worst_point"]["data"] == "sub3072d"
    assert n["median_above"] == 1  # 1.03 > 1.02
    assert n["worst_above"] == 2  # 1.2 and 2.0 > 1.1
    assert n["default"] == pytest.approx(0.5)
    everything = calibrated_page.summary_numbers(points)
    assert (everything["median_above"], everything["worst_above"]) == (1, 3)
    line = calibrated_page.summary(groups["exact mixtures (Karras + flow)"], "exact")
    assert line.startswith("| exact | 3 | ") and "2.000 (sub3072d/karras, 8 NFE) | 1 | 2 |" in line


def test_markdown_has_the_spread_columns(tmp_path):
    problem = SimpleNamespace(name="mix2d", kind="karras")
    seeds = [seed(0, 0.10, 2.0, 1000, 50.0), seed(1, 0.30, 4.0, 3000, 70.0),
             seed(2, 0.20, 3.0, 2000, 40.0)]
    rows = field_rows("mix2d", 0.2, 0.4) + [calibrated.seeds_row(problem, 5, seeds)]
    points = calibrated.comparison(rows)
    meta = {"calibration_samples": 32, "seeds": 3, "calibration_seeds": [31337, 31338, 31339],
            "samples": {"mix2d": 10}, "ref_steps": 10, "threads": 1, "wall_seconds": 1.0,
            "nfes": [5], "memory": calibrated.MEMORY}
    calibrated_page.write_markdown(tmp_path, rows, points, meta)
    text = (tmp_path / "calibrated.md").read_text()
    assert "| mix2d | karras | 5 | uni_pc + kl_optimal | 0.2000 | 0.2000 | 1.000 | 1.500 |" in text
    assert "| 3.0 | 2000 (1000-3000) | 200 | 50 (70) |" in text
    assert "| exact mixtures (Karras + flow), NFE 5 | 1 | 1.000 | 1.500 |" in text
    assert "The best pair:" not in text  # a run that did not record how it chose


def test_the_page_says_how_the_best_pair_was_chosen():
    meta = {"samples": {"mix2d": 2000, "digits": 500}, "finalists": 3,
            "pair_samples": {"mix2d": 2000, "digits": 500}}
    assert "on all the samples." in calibrated_page.pair_choice(meta)
    meta["pair_samples"] = {"mix2d": 500, "digits": 125}
    sentence = calibrated_page.pair_choice(meta)
    assert "{'mix2d': 500, 'digits': 125} samples, the 3 best per NFE on all" in sentence


def test_calibration_noise_differs_per_seed_and_seed_0_is_the_old_noise():
    problem = SimpleNamespace(kind="karras", x_start=torch.zeros(3, 6))
    first, second = (calibrated.calibration_noise(problem, 4, s) for s in (0, 1))
    old = 80.0 * torch.randn(4, 6, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(calibrated.CALIBRATION_SEED))
    assert torch.equal(first, old.to(torch.float32)) and not torch.equal(first, second)


def test_peak_rss_sees_a_200_mb_allocation():
    with PeakRSS() as measured:
        block = bytearray(b"\x01") * (200 * MB)  # written, so resident
        time.sleep(0.1)
        del block
    assert measured.samples >= 5
    assert 190 * MB <= measured.above_start <= 240 * MB
    with PeakRSS() as idle:
        pass
    assert idle.above_start < 20 * MB


def test_max_rss_in_a_fresh_process_sees_a_200_mb_allocation():
    code = ("import json, time\n"
            "from bench.rss import MB, PeakRSS\n"
            "with PeakRSS() as m:\n"
            "    block = bytearray(b'\\x01') * (200 * MB)\n"
            "    time.sleep(0.05)\n"
            "    del block\n"
            "print(json.dumps(m.summary()))\n")
    # Started from a small intermediate process: Linux carries the parent's RSS (pytest's,
    # with torch and ComfyUI) into a child's ru_maxrss across exec.
    relay = "import subprocess, sys; raise SystemExit(subprocess.run(sys.argv[1:]).returncode)"
    out = subprocess.run([sys.executable, "-c", relay, sys.executable, "-c", code],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    result = json.loads(out.stdout)
    assert 190 <= result["peak_rss_above_start_mb"] <= 240
    assert 190 <= result["max_rss_above_start_mb"] <= 240
    # From pytest itself, the child's ru_maxrss starts above the allocation's peak: not known.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    result = json.loads(out.stdout)
    assert 190 <= result["peak_rss_above_start_mb"] <= 240
    assert result["max_rss_above_start_mb"] is None


def test_memory_case_measures_the_reference_and_the_cost():
    result = memory.run_case("default", shape=(2, 8, 8), samples=6, steps=3,
                             options={"iterations": 1, "reference_steps": 4})
    # One Reference on all 6 noises (its parts are views of it).
    assert result["references"] == 1
    assert result["reference_bytes"] == memory.expected_reference_bytes(6, 2 * 8 * 8, 4)
    assert result["evaluations"] > result["model_calls"] > 0
    for key in ("seconds", "peak_rss_above_start_mb", "max_rss_above_start_mb",
                "rss_samples", "chosen", "iterations"):
        assert key in result
    assert result["peak_rss_above_start_mb"] >= 0


def test_latent_gaussian_denoiser_limits():
    model = memory.LatentGaussian((2, 8, 8))
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    near_data = model(x, torch.full((3,), 1e-4))
    assert torch.allclose(near_data, x, atol=1e-3)
    far = model(1e4 * x, torch.full((3,), 1e4))
    assert torch.allclose(far, model.mean.expand_as(far), atol=1e-2)
    assert (model.spectrum > 0).all()


def test_memory_repeats_give_median_and_range():
    runs = [{"case": "default", "seconds": s, "peak_rss_above_start_mb": peak,
             "max_rss_above_start_mb": top, "iterations": 0}
            for s, peak, top in ((30.0, 3650.0, 3655.0), (20.0, 2790.0, None),
                                 (25.0, 3600.0, 3610.0))]
    r = memory.repeated(runs)
    assert (r["peak_rss_above_start_mb"], r["peak_rss_above_start_mb_min"],
            r["peak_rss_above_start_mb_max"]) == (3600.0, 2790.0, 3650.0)
    assert r["max_rss_above_start_mb"] == pytest.approx(3632.5)  # n/a runs left out
    assert (r["seconds"], r["repeats"], r["runs"]) == (25.0, 3, runs)
    assert memory.spread_of(r, "peak_rss_above_start_mb") == "3600 (2790-3650)"
    assert memory.spread_of({**runs[1], "repeats": 1}, "max_rss_above_start_mb") == "n/a"


def test_memory_bench_end_to_end_on_a_tiny_latent(tmp_path):
    """Each run in a child process, the JSON and the markdown written."""
    results = memory.main(["--out", str(tmp_path), "--cases", "default", "--repeats", "1",
                           "--shape", "2", "8", "8", "--samples", "6", "--steps", "3",
                           "--iterations", "1"])
    (r,) = results
    assert r["shape"] == [2, 8, 8] and r["repeats"] == 1 and len(r["runs"]) == 1
    assert r["reference_bytes"] == memory.expected_reference_bytes(
        6, 128, CALIBRATE_DEFAULTS["reference_steps"])
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert saved["results"][0]["evaluations"] == r["evaluations"] > 0
    assert "| default | 1 x 0 |" in (tmp_path / "memory.md").read_text()


def test_cost_against_the_baseline_from_known_points(tmp_path):
    baseline = tmp_path / "cost_baseline.json"
    baseline.write_text(json.dumps({"points": [
        {"data": "a", "schedule": "karras", "nfe": 8, "evaluations": 300, "rms": 0.4},
        {"data": "a", "schedule": "karras", "nfe": 10, "evaluations": 1200, "rms": 0.2},
        {"data": "a", "schedule": "karras", "nfe": 4, "evaluations": 999, "rms": 1.0}]}))
    points = [{"data": "a", "schedule": "karras", "nfe": nfe, "ratio": ratio, "best_rms": 0.1,
               "cost": {"evaluations": evaluations}}
              for nfe, ratio, evaluations in ((4, 0.5, 1), (8, 0.5, 100), (10, 0.2, 100))]
    cost = calibrated_page.cost_against_baseline(points, baseline)
    assert cost["points"] == 2  # NFE 8 and 10 only
    assert cost["fewer"] == pytest.approx(6.0)  # sqrt(3 x 12)
    assert (cost["fewer_min"], cost["fewer_max"]) == (3.0, 12.0)
    assert cost["ratio"] == pytest.approx(0.1 ** 0.5)
    assert cost["ratio_baseline"] == pytest.approx(8 ** 0.5)  # sqrt(4 x 2)
    assert calibrated_page.cost_against_baseline(points, tmp_path / "none.json") is None


def test_report_guide_divides_the_reports_test_ratio_by_the_benchmarks():
    problem = SimpleNamespace(name="mix2d", kind="karras")
    seeds = [{**seed(i, value, 1.0, 100, 1.0), "test_rms": test, "test_rms_best_pair": 0.2}
             for i, (value, test) in enumerate(((0.1, 0.1), (0.2, 0.1), (0.4, 0.8)))]
    rows = field_rows("mix2d", 0.2, 0.4) + [calibrated.seeds_row(problem, 5, seeds)]
    guide = calibrated_page.report_guide(rows, calibrated.comparison(rows))
    # report ratios 0.5, 0.5, 4; benchmark ratios 0.5, 1, 2: quotients 1, 0.5, 2
    assert guide == {"exact mixtures": {"calibrations": 3, "median": 1.0, "p10": 0.5,
                                        "p90": 2.0, "min": 0.5, "max": 2.0}}


def test_typical_errors_divide_by_the_lowest_median_of_any_pair():
    problem = SimpleNamespace(name="mix2d", kind="karras")
    rows = field_rows("mix2d", 0.2, 0.4)
    rows[0]["median"], rows[1]["median"] = 0.1, 0.05  # the RMS-best pair, another pair
    rows += [calibrated.seeds_row(problem, 5, [seed(i, v, 1.0, 100, 1.0)
                                               for i, v in enumerate((0.1, 0.3, 0.2))])]
    typical = calibrated_page.typical_errors(rows, calibrated.comparison(rows))
    # calibrated median error 0.1 (the median of 0.05, 0.15, 0.1) over the lowest pair median
    # 0.05; its RMS / median 0.2 / 0.1; the best pair's 0.2 / 0.1
    assert typical == {"exact mixtures (Karras + flow)": {
        "points": 1, "median": pytest.approx(2.0), "median_max": pytest.approx(2.0),
        "tail": pytest.approx(2.0), "tail_best": pytest.approx(2.0)}}
    rows[0]["median"] = 0.02
    assert calibrated_page.typical_errors(rows, calibrated.comparison(rows))[
        "exact mixtures (Karras + flow)"]["tail_best"] == pytest.approx(10.0)


def test_option_sets_summarised_per_set_and_data_set(tmp_path):
    from bench import options

    rows = [{"set": name, "data": data, "schedule": "karras", "nfe": 8, "ratio": ratio,
             "ratio_max": ratio * 2, "evaluations": evaluations}
            for name, data, ratio, evaluations in (
                ("a", "mix2d", 0.5, 100), ("a", "digits", 2.0, 400), ("b", "mix2d", 0.25, 100),
                ("b", "digits", 0.25, 100))]
    sets = {"a": {}, "b": {"history": 4}}
    summary = options.summaries(sets, rows)
    assert summary["a"]["ratio"] == pytest.approx(1.0)  # sqrt(0.5 x 2)
    assert summary["a"]["evaluations"] == pytest.approx(200.0)
    assert summary["b"]["by_data"] == {"mix2d": 0.25, "digits": 0.25}
    data = {"meta": {"sets": sets, "seeds": 3, "nfes": [8], "wall_seconds": 1}, "rows": rows}
    (tmp_path / "x.json").write_text(json.dumps(data))
    options.main(["--markdown-only", "--name", "x", "--out", str(tmp_path)])
    text = (tmp_path / "x.md").read_text()
    assert '| b | `{"history": 4}` | 0.250 | 0.500 | 100 | mix2d 0.250, digits 0.250 |' in text
    assert "| mix2d/karras/8 | 0.500 (1.000), 100 | 0.250 (0.500), 100 |" in text


def test_calibrated_sigmas_typical_line_from_known_points():
    from bench import calibrated_sigmas

    points = [{"data": "mix64d", "schedule": "flow", "sampler": "euler", "nfe": 4,
               "best_scheduler": "karras", "best": 0.4, "calibrated": 0.6,
               "calibrated_median": 0.1, "medians": {"karras": 0.2, "beta": 0.05}}]
    # median 0.1 / 0.05; RMS / median 0.6 / 0.1 and the best scheduler's 0.4 / 0.2
    assert "mix64d flow 2.000 (RMS / median 6.00 against 2.00)" in (
        calibrated_sigmas.typical_line(points))


def test_calibrated_sigmas_name_the_points_the_test_noise_does_not_decide():
    from bench import calibrated_sigmas

    def point(nfe, ratio, interval):
        return {"data": "mix64d", "schedule": "flow", "sampler": "deis", "nfe": nfe,
                "ratio": ratio, "ratio_interval": interval}
    lines = calibrated_sigmas.interval_lines([point(4, 1.3, [1.1, 1.6]),
                                              point(6, 1.05, [0.6, 1.4]),
                                              point(8, 0.7, [0.6, 0.8])])
    assert lines[0] == ("Of the 2 points above 1.02, 1 are above it over the whole 90% "
                        "bootstrap interval of the ratio (the benchmark's test samples "
                        "resampled, the same rows for both): deis mix64d/flow 4 NFE 1.30 "
                        "(1.10-1.60).")
    assert calibrated_sigmas.interval_lines([point(8, 0.7, [0.6, 0.8])]) == []


def test_calibrated_sigmas_in_sample_fits_on_the_test_noise_and_says_so(tmp_path, monkeypatch):
    from bench import calibrated_sigmas

    seen = []

    def point(problem, name, nfe, noise, **options):
        seen.append((noise, options))
        return {"data": "mix64d", "schedule": "karras", "sampler": name, "nfe": nfe,
                "metric": "rms", "best_scheduler": "karras", "best": 0.2, "calibrated": 0.1,
                "ratio": 0.5, "chosen": "x", "cost": {"seconds": 1.0, "evaluations": 10}}
    monkeypatch.setattr(calibrated_sigmas, "point", point)
    problem = SimpleNamespace(name="mix64d", flow=False, kind="karras", distribution_metrics=None,
                              x_start=torch.ones(3, 2, dtype=torch.float64))
    args = SimpleNamespace(in_sample=True, samplers=["euler", "euler_ancestral"], nfes=[4],
                           calibration_samples=8, options={})
    points = calibrated_sigmas.problem_points(problem, args)
    assert len(points) == 1  # no stochastic metric on this problem
    (noise, options), = seen
    assert noise.dtype == torch.float32 and torch.equal(noise, problem.x_start.float())
    assert options == {"screen_rows": 0}
    args.in_sample = False
    calibrated_sigmas.problem_points(problem, args)
    assert seen[1][0].shape == (8, 2) and seen[1][1] == {}  # noise of its own
    args.options = {"screen_rows": 2}  # --options: to every calibration
    calibrated_sigmas.problem_points(problem, args)
    assert seen[2][1] == {"screen_rows": 2}
    meta = {"calibration_samples": 8, "samples": 3, "wall_seconds": 1.0, "threads": 1,
            "in_sample": True, "least_squares": True}
    calibrated_sigmas.write_markdown(tmp_path, points, meta, "x")
    text = (tmp_path / "x.md").read_text()
    assert "the benchmark's test noise itself" in text and "by plain least squares" in text
    calibrated_sigmas.write_markdown(tmp_path, points, {**meta, "in_sample": False}, "y")
    assert "8 float32 noises of its own," in (tmp_path / "y.md").read_text()
    calibrated_sigmas.write_markdown(tmp_path, points, {**meta, "in_sample": False,
                                                        "options": {"screen_rows": 2}}, "z")
    assert ('8 float32 noises of its own with the options `{"screen_rows": 2}`,'
            in (tmp_path / "z.md").read_text())
