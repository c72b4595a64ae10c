"""The LML Sampler Lab in the browser: load its example workflow, run a small study with the Run
button, and check that web/lml_lab.js draws the report table on the node with the best rows
highlighted (read back from the graph canvas's pixels).  It uses the shared browser page of
tests/web/conftest.py (the host's pinned frontend, classic canvas); a screenshot goes to
test_artifacts/.

Needs /usr/bin/chromium and pip `playwright` in the host venv (scripts/install_browser.sh).
"""

import importlib.metadata
import json

import pytest

from harness import comfy_host
from harness.comfy_host import ROOT

ARTIFACTS = ROOT / "test_artifacts"
WORKFLOW = "lml_sampler_lab"
PINNED_CLASSIC = (importlib.metadata.version("comfyui-frontend-package"), "classic")

pytestmark = pytest.mark.parametrize("lml_page", [PINNED_CLASSIC], indirect=True,
                                     ids=["-".join(PINNED_CLASSIC)])


@pytest.fixture
def lab_page(lml_page):
    lml_page.wait_for_function("window.app.extensions?.some(e => e.name === 'comfyui-lml.lab')",
                               timeout=90_000)
    return lml_page


def lab_errors(console):
    return [m for m in console if m["type"] in ("error", "pageerror")
            and ("lml_lab" in m["text"] + m["url"] or "Lab's table" in m["text"])]


def test_bad_ui_data_adds_no_table(lab_page):
    result = lab_page.evaluate("""() => {
        const node = LiteGraph.createNode("LMLSamplerLab");
        app.graph.add(node);
        const before = node.widgets.length;
        for (const output of [undefined, {}, {lml_lab: []}, {lml_lab: ["not json"]},
                              {lml_lab: [{rows: "x"}]}, {lml_lab: [{rows: [{sampler: 1}]}]}]) {
            node.onExecuted(output);
        }
        const after = node.widgets.length;
        app.graph.remove(node);
        return {before, after};
    }""")
    assert result["after"] == result["before"]
    assert lab_errors(lab_page.console_messages) == []


def test_study_shows_the_table_with_the_best_rows_highlighted(lab_page, server, fresh_seed):
    page = lab_page
    status, raw = server.request(f"/api/workflow_templates/{comfy_host.PACK_NAME}/"
                                 f"{WORKFLOW}.json")
    assert status == 200
    page.evaluate("workflow => app.loadGraphData(workflow)", json.loads(raw))
    page.wait_for_function("app.graph.nodes.some(n => n.type === 'LMLSamplerLab')",
                           timeout=20_000)
    node_id = page.evaluate("app.graph.nodes.find(n => n.type === 'LMLSamplerLab').id")
    assert page.evaluate("""id => app.graph.getNodeById(id).widgets
                            .every(w => w.name !== 'lml_lab_table')""", node_id)

    # The test checkpoint, 64x64, two samplers at two step counts, a short reference.
    page.evaluate("""([ckpt, seed]) => {
        const set = (node, name, value) => {
            node.widgets.find(w => w.name === name).value = value;
        };
        for (const node of app.graph.nodes) {
            if (node.type === 'CheckpointLoaderSimple') set(node, 'ckpt_name', ckpt);
            if (node.type === 'EmptyLatentImage') {
                set(node, 'width', 64);
                set(node, 'height', 64);
            }
            if (node.type === 'LMLSamplerLab') {
                set(node, 'samplers', 'euler,heun');
                set(node, 'steps', '2,3');
                set(node, 'reference_steps', 6);
                set(node, 'seed', seed);
            }
        }
        app.canvas.setDirty(true, true);
    }""", [comfy_host.CHECKPOINT_NAME, fresh_seed()])
    page.locator("[data-testid=queue-button]").first.click()

    page.wait_for_function("id => window.LMLLab?.nodes?.[id]", arg=node_id, timeout=180_000)
    page.evaluate("""id => {  // the Lab node near the top left, at 100% zoom
        const node = app.graph.getNodeById(id);
        app.canvas.ds.scale = 1;
        app.canvas.ds.offset = [120 - node.pos[0], 120 - node.pos[1]];
        app.canvas.setDirty(true, true);
    }""", node_id)
    page.wait_for_timeout(500)
    table = page.evaluate("""id => {
        app.canvas.draw(true, true);
        const info = window.LMLLab.nodes[id];
        const canvas = app.canvas.canvas;
        const [x, y, w, h] = info.rect.map(Math.round);
        const x0 = Math.max(0, x), y0 = Math.max(0, y);
        const x1 = Math.min(canvas.width, x + w), y1 = Math.min(canvas.height, y + h);
        const data = canvas.getContext('2d').getImageData(x0, y0, x1 - x0, y1 - y0).data;
        const rgb = [1, 3, 5].map(i => parseInt(info.colors.best.slice(i, i + 2), 16));
        let bestPixels = 0, textPixels = 0;
        for (let i = 0; i < data.length; i += 4) {
            if (rgb.every((v, k) => Math.abs(data[i + k] - v) < 12)) bestPixels++;
            if (data[i] > 180 && data[i + 1] > 180 && data[i + 2] > 180) textPixels++;
        }
        return {rows: info.rows, best: info.best, visible: [x1 - x0, y1 - y0],
                bestPixels, textPixels};
    }""", node_id)
    page.screenshot(path=str(ARTIFACTS / "browser_lab_table.png"))

    assert table["rows"] == 4
    assert table["visible"][0] > 200 and table["visible"][1] > 80, table
    assert table["best"], table  # at least one row on the frontier ...
    assert table["bestPixels"] > 500, table  # ... drawn highlighted
    # the numbers: light anti-aliased glyphs (about 90-150 such pixels for 4 rows, depending on
    # the page's earlier state); an empty or unlabelled table has none
    assert table["textPixels"] > 40, table

    # The same run on the server: its report has the rows the table shows.
    history = server.get_json("/history")
    entry = max(history.values(), key=lambda e: e["status"]["messages"][-1][1]["timestamp"])
    lab = next(k for k, v in entry["prompt"][2].items() if v["class_type"] == "LMLSamplerLab")
    (report,) = entry["outputs"][lab]["lml_lab"]
    assert len(report["rows"]) == 4
    assert sorted(f"{r['sampler']}@{r['steps']}" for r in report["rows"] if r["best"]) == \
        sorted(table["best"])
    assert lab_errors(page.console_messages) == []
