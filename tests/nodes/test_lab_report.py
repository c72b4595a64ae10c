"""The Lab's comfy-free helpers (nodes/lab_report.py): parsing, expected model calls, the metric,
the report and its frontier, and the two pictures.  The module is reached the one way every
module of the pack is, through the pack as ComfyUI loads it; that it needs no comfy is shown by
its imports."""

import ast
import json
import math

import numpy as np
import pytest
import torch

from harness.comfy_host import ROOT

PATH = ROOT / "nodes" / "lab_report.py"
KNOWN = ["euler", "heun", "dpmpp_2m", "lml_euler", "euler_ancestral", "uni_pc"]


@pytest.fixture(scope="module")
def lab(pack):
    return pack.nodes.lab_report


def test_imports_no_comfy():
    imported = set()
    for node in ast.walk(ast.parse(PATH.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0] if node.level == 0 else ".")
    assert imported <= {"__future__", "math", "re", "collections", "numpy", "torch", "PIL"}, \
        imported


# --------------------------------------------------------------------------------------------
# Parsing


def test_parse_samplers_keeps_order_and_drops_duplicates(lab):
    assert lab.parse_samplers(" euler, lml_euler,heun ,euler", KNOWN) == [
        "euler", "lml_euler", "heun"]


@pytest.mark.parametrize("text, named", [("euler,eulr", "'eulr'"), ("", "at least one"),
                                         ("heun,,DPMPP_2M", "'DPMPP_2M'")])
def test_parse_samplers_names_the_bad_entry(lab, text, named):
    with pytest.raises(ValueError, match="samplers") as error:
        lab.parse_samplers(text, KNOWN)
    assert named in str(error.value)


SCHEDULERS = ["simple", "karras", "exponential", "sgm_uniform"]


def test_parse_schedulers_keeps_order_drops_duplicates_and_may_be_empty(lab):
    assert lab.parse_schedulers("karras, exponential karras", SCHEDULERS) == [
        "karras", "exponential"]
    assert lab.parse_schedulers("", SCHEDULERS) == []  # the node's `scheduler` alone
    assert lab.parse_schedulers(" , ", SCHEDULERS) == []
    assert lab.parse_schedulers(None, SCHEDULERS) == []


@pytest.mark.parametrize("text, named", [("karras,karas", "'karas'"),
                                         ("Karras", "'Karras'"), ("euler", "'euler'")])
def test_parse_schedulers_names_the_input_and_the_bad_entry(lab, text, named):
    with pytest.raises(ValueError, match="^schedulers: unknown scheduler ") as error:
        lab.parse_schedulers(text, SCHEDULERS)
    assert named in str(error.value) and ", ".join(SCHEDULERS) in str(error.value)


def test_row_label_names_the_pair_where_schedulers_are_compared(lab):
    assert lab.row_label("dpmpp_2m", "karras") == "dpmpp_2m + karras"
    assert lab.row_label("dpmpp_2m") == "dpmpp_2m"
    assert lab.label_of({"sampler": "euler", "label": "euler + karras"}) == "euler + karras"
    assert lab.label_of({"sampler": "euler"}) == "euler"  # a report from before the input


def test_parse_steps_sorts_and_dedupes(lab):
    assert lab.parse_steps("8, 2,4 4") == [2, 4, 8]


@pytest.mark.parametrize("text, named", [("4,six", "'six'"), ("4,0", "0 is out of range"),
                                         ("2.5", "'2.5'"), ("20000", "20000"),
                                         (" , ", "at least one")])
def test_parse_steps_names_the_bad_entry(lab, text, named):
    with pytest.raises(ValueError, match="steps") as error:
        lab.parse_steps(text)
    assert named in str(error.value)


# --------------------------------------------------------------------------------------------
# Metric


def test_rms_error(lab):
    ref = torch.zeros(1, 4, 8, 8)
    assert lab.rms_error(ref, ref) == 0.0
    assert lab.rms_error(ref + 3.0, ref) == pytest.approx(3.0)
    x = torch.zeros(2, 2)
    x[0, 0] = 4.0  # one of four values off by 4: sqrt(16 / 4) = 2
    assert lab.rms_error(x, torch.zeros(2, 2)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shape"):
        lab.rms_error(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 9))


def test_psnr(lab):
    ref = torch.full((1, 8, 8, 3), 0.5)
    assert lab.psnr(ref, ref) is None  # identical: infinite, which JSON cannot carry
    assert lab.psnr(ref + 0.1, ref) == pytest.approx(20.0)  # mse 0.01 -> 20 dB
    assert lab.psnr(ref + 1.0, ref) == pytest.approx(10 * math.log10(1 / 0.25))  # clamped to 1


# --------------------------------------------------------------------------------------------
# Report


def rows():
    return [
        {"sampler": "euler", "steps": 2, "nfe": 2, "error": 0.50, "psnr": 20.0, "seconds": 0.1},
        {"sampler": "euler", "steps": 4, "nfe": 4, "error": 0.30, "psnr": 24.0, "seconds": 0.2},
        {"sampler": "heun", "steps": 2, "nfe": 3, "error": 0.20, "psnr": 26.0, "seconds": 0.2},
        {"sampler": "heun", "steps": 4, "nfe": 7, "error": 0.25, "psnr": 25.0, "seconds": 0.4},
        {"sampler": "euler_ancestral", "steps": 2, "nfe": 2, "error": 0.60, "psnr": 19.0,
         "seconds": 0.1, "stochastic": True},
        {"sampler": "nan", "steps": 2, "nfe": 1, "error": float("nan"), "psnr": None,
         "seconds": 0.1},
    ]


def test_best_is_the_error_vs_nfe_frontier(lab):
    marked = lab.mark_best(rows())
    best = [(r["sampler"], r["steps"]) for r in marked if r["best"]]
    # euler@2 is best with 2 calls; heun@2 beats euler@4 with fewer calls; heun@4 is beaten by
    # heun@2; euler_ancestral@2 by euler@2 at the same NFE; NaN is never best.
    assert best == [("euler", 2), ("heun", 2)]


def test_report_has_reference_metric_rows_and_stochastic_note(lab):
    reference = {"sampler": "dpmpp_2m", "steps": 32, "nfe": 32, "seconds": 1.0,
                 "stochastic": False}
    report = lab.build_report(reference, rows()[:5], {"seed": 1, "cfg": 5.0})
    assert report["reference"] == reference
    assert set(report["metric"]) == {"error", "psnr", "nfe"}
    assert "RMS" in report["metric"]["error"] and "dB" in report["metric"]["psnr"]
    assert len(report["rows"]) == 5
    for row in report["rows"]:
        assert {"sampler", "steps", "nfe", "error", "psnr", "seconds", "best"} <= set(row)
    (note,) = report["notes"]
    assert "euler_ancestral" in note and "noise" in note
    json.dumps(report, allow_nan=False)  # valid JSON
    table = lab.format_table(report)
    assert table.count("\n") == 5 and "heun" in table

    stochastic_reference = dict(reference, sampler="euler_ancestral", stochastic=True)
    notes = lab.build_report(stochastic_reference, rows()[:2], {})["notes"]
    assert any("reference sampler euler_ancestral is stochastic" in n for n in notes)


# --------------------------------------------------------------------------------------------
# Pictures


def colour_pixels(picture, rgb, tolerance=30):
    return int((np.abs(picture.astype(int) - np.array(rgb)).max(axis=-1) < tolerance).sum())


def test_plot_draws_one_coloured_line_per_sampler(lab):
    report = lab.build_report({"sampler": "dpmpp_2m", "steps": 32}, rows()[:4], {})
    plot = lab.draw_error_plot(report)
    assert plot.shape == (512, 768, 3) and plot.dtype == np.uint8
    for index in range(2):  # euler and heun, in the palette's order
        assert colour_pixels(plot, lab.PALETTE[index]) > 200, index
    assert colour_pixels(plot, lab.PALETTE[2]) < 20  # no third sampler
    batch = lab.as_image_batch(plot)
    assert batch.shape == (1, 512, 768, 3) and 0.0 <= float(batch.min()) <= float(batch.max()) <= 1


def pair_rows():
    """euler and heun on karras and exponential, at 2 and 4 steps, and lml_calibrated."""
    out = []
    for k, sampler in enumerate(("euler", "heun")):
        for j, scheduler in enumerate(("karras", "exponential")):
            for steps in (2, 4):
                nfe = steps if sampler == "euler" else 2 * steps - 1
                out.append({"sampler": sampler, "scheduler": scheduler,
                            "label": lab_row_label(sampler, scheduler), "steps": steps,
                            "nfe": nfe, "error": (0.5 + 0.1 * j) / nfe ** (1 + k),
                            "psnr": 20.0, "seconds": 0.1})
    out += [{"sampler": "lml_calibrated", "scheduler": None,
             "label": "lml_calibrated (best of the pairs)", "steps": steps, "nfe": steps,
             "error": 0.01 / steps, "psnr": 30.0, "seconds": 0.1} for steps in (2, 4)]
    return out


def lab_row_label(sampler, scheduler):
    return f"{sampler} + {scheduler}"


def test_pairs_keep_their_samplers_colour_and_get_their_schedulers_pattern(lab):
    rows = pair_rows()
    assert [lab.line_style(rows, lab_row_label("euler", s)) for s in ("karras", "exponential")
            ] == [(lab.PALETTE[0], None, "circle"),
                  (lab.PALETTE[0], lab.DASHES[1], "square")]
    assert lab.line_style(rows, "heun + exponential")[0] == lab.PALETTE[1]
    assert lab.line_style(rows, "lml_calibrated (best of the pairs)") == (
        lab.PALETTE[2], None, "circle")  # not one scheduler's: solid
    report = lab.build_report({"sampler": "dpmpp_2m", "steps": 32}, rows, {})
    # lml_calibrated has the lowest error at 2 and 4 calls: it is the best there; heun's pairs
    # (3 and 7 calls) cannot beat it
    assert [(r["label"], r["steps"]) for r in report["rows"] if r["best"]] == [
        ("lml_calibrated (best of the pairs)", 2), ("lml_calibrated (best of the pairs)", 4)]
    plot = lab.draw_error_plot(report)
    for index in range(3):
        assert colour_pixels(plot, lab.PALETTE[index]) > 200, index
    assert colour_pixels(plot, lab.PALETTE[3]) < 20
    # the dashed exponential lines draw fewer pixels than the same lines solid
    solid = [dict(r, scheduler=None, label=r["sampler"] + " " + (r["scheduler"] or ""))
             for r in rows]
    solid_plot = lab.draw_error_plot(lab.build_report({"sampler": "dpmpp_2m", "steps": 32},
                                                      solid, {}))
    assert colour_pixels(plot, lab.PALETTE[0]) < colour_pixels(solid_plot, lab.PALETTE[0])
    table = lab.format_table(report)
    assert "heun + exponential" in table and "lml_calibrated (best of the pairs)" in table


def test_plot_without_plottable_points_says_so(lab):
    zero = [{"sampler": "dpmpp_2m", "steps": 32, "nfe": 32, "error": 0.0, "psnr": None,
             "seconds": 1.0}]
    plot = lab.draw_error_plot(lab.build_report({"sampler": "dpmpp_2m", "steps": 32}, zero, {}))
    assert plot.shape == (512, 768, 3)


def test_grid_has_a_cell_per_sampler_and_step_plus_the_reference(lab):
    red, blue = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    samplers, steps = ["euler", "heun"], [2, 4, 8]
    cells = {(s, n): red for s in samplers for n in steps}
    grid = lab.draw_grid(cells, samplers, steps, blue, "dpmpp_2m 32",
                         captions={("euler", 2): "nfe 2"}, best=[("heun", 8)])
    cw, ch = lab.cell_size(red.shape)
    assert (cw, ch) == (128, 128)  # small images are enlarged to 128 px
    assert colour_pixels(grid, (255, 0, 0), 5) >= 6 * (cw - 6) * (ch - 6)
    assert colour_pixels(grid, (0, 0, 255), 5) >= (cw - 6) * (ch - 6)  # the reference, once
    assert colour_pixels(grid, (0, 0, 255), 5) < 2 * cw * ch
    assert lab.cell_size((1024, 768, 3)) == (192, 256)  # large images are reduced, aspect kept


def test_grid_rows_are_named_by_their_pair_and_the_pictures_stay_whole(lab):
    red, blue = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    labels = ["euler + karras", "lml_calibrated (best of the pairs)"]
    cells = {(label, n): red for label in labels for n in (2, 4)}
    grid = lab.draw_grid(cells, labels, [2, 4], blue, "dpmpp_2m 32",
                         best=[("lml_calibrated (best of the pairs)", 4)])
    short = lab.draw_grid({("euler", n): red for n in (2, 4)}, ["euler"], [2, 4], blue, "ref")
    cw, ch = lab.cell_size(red.shape)
    # the long label widens the label column; no label covers a picture
    assert grid.shape[1] > short.shape[1]
    assert colour_pixels(grid, (255, 0, 0), 5) >= 4 * (cw - 6) * (ch - 6)
    assert colour_pixels(grid, (92, 214, 120), 5) > 4 * cw  # the best cell's green frame
