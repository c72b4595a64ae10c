"""bench.gpu, the GPU check, on the CPU: its parts compute what they say, and the committed
docs/bench/gpu/gpu.md is what its markdown makes of the committed gpu.json (no number typed by
hand)."""

import json
from pathlib import Path

import torch

from bench import gpu

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bench" / "gpu"


def test_precondition_part_matches_float64_within_each_precision():
    rows = gpu.precondition(torch.device("cpu"), quick=True)
    assert {(r["rank"], r["dtype"]) for r in rows} == {
        (rank, dtype) for rank in (1, 2, 4) for dtype in gpu.PRECISIONS}
    bounds = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}  # each input's rounding
    for r in rows:
        assert r["finite"] and r["rel_error_vs_cpu_float64"] < bounds[r["dtype"]], r


def test_half_eps_rounds_the_noise_prediction_only():
    def model(x, sigma):
        return 0.3 * x

    x, sigma = torch.randn(2, 4, 8, 8) * 5, torch.tensor([5.0, 5.0])
    exact = gpu.HalfEps(model, None)(x, sigma)
    rounded = gpu.HalfEps(model, torch.float16)(x, sigma)
    assert torch.equal(exact, model(x, sigma))
    eps = (x - exact) / 5.0
    assert torch.allclose(rounded, x - 5.0 * eps.half().float(), atol=1e-6)
    assert not torch.equal(rounded, exact) and rounded.dtype == torch.float32


def test_committed_report_is_the_markdown_of_the_committed_json():
    results = json.loads((DOCS / "gpu.json").read_text())
    text = gpu.markdown(results, (DOCS / "nodes_tests.log").read_text())
    assert text == (DOCS / "gpu.md").read_text()
    assert "195 passed" in text
