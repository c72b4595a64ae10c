"""The LML Sampler Lab in the browser: load its example workflow, run a small study with the Run
button, and check that web/lml_lab.js draws the report table on the node with the best rows
highlighted (read back from the pixels of the canvas it was drawn on: the graph canvas, or the
widget's own canvas with Vue nodes).  It uses the shared browser pages of tests/web/conftest.py:
both frontends, classic and Vue nodes (test ids like ``[1.58.1-vue]``); a screenshot goes to
test_artifacts/.

Needs /usr/bin/chromium and pip `playwright` in the host venv (scripts/install_browser.sh).
"""

import json

import pytest

from harness import comfy_host

from .conftest import artifact_name, feed_bad_outputs, read_drawn, set_small_run, show_node

WORKFLOW = "lml_sampler_lab"


@pytest.fixture
def lab_page(lml_page):
    lml_page.wait_for_function("window.app.extensions?.some(e => e.name === 'comfyui-lml.lab')",
                               timeout=90_000)
    return lml_page


def lab_errors(console):
    return [m for m in console if m["type"] in ("error", "pageerror")
            and ("lml_lab" in m["text"] + m["url"] or "Lab's table" in m["text"])]


def test_bad_ui_data_adds_no_table(lab_page):
    # The table widget is there from the start (see on_node_widget.js) but empty; bad or
    # missing ui data changes none of that.
    result = feed_bad_outputs(lab_page, "LMLSamplerLab", "lml_lab_table", "LMLLab", "lmlLab",
                              [{}, {"lml_lab": []}, {"lml_lab": ["not json"]},
                               {"lml_lab": [{"rows": "x"}]},
                               {"lml_lab": [{"rows": [{"sampler": 1}]}]}])
    assert result["before"]["height"] == 0
    assert result == {"before": result["before"], "after": result["before"], "drawn": False,
                      "data": None}
    assert lab_errors(lab_page.console_messages) == []


def test_study_shows_the_table_with_the_best_rows_highlighted(lab_page, fresh_seed):
    page, mode, server = lab_page, lab_page.lml["mode"], lab_page.lml["server"]
    page.evaluate("app.graph.clear(); app.canvas.setDirty(true, true)")
    status, raw = server.request(f"/api/workflow_templates/{comfy_host.PACK_NAME}/"
                                 f"{WORKFLOW}.json")
    assert status == 200
    page.evaluate("workflow => app.loadGraphData(workflow)", json.loads(raw))
    page.wait_for_function("app.graph.nodes.some(n => n.type === 'LMLSamplerLab')",
                           timeout=20_000)
    node_id = page.evaluate("app.graph.nodes.find(n => n.type === 'LMLSamplerLab').id")
    if mode == "vue":
        page.locator(f"[data-node-id='{node_id}']").wait_for(timeout=20_000)
    assert page.evaluate("""id => {  // no table before the first run
        const table = app.graph.getNodeById(id).widgets.find(w => w.name === 'lml_lab_table');
        return table.computeSize(300)[1] === 0 && !window.LMLLab?.nodes?.[id];
    }""", node_id)

    # The test checkpoint, 64x64, two samplers on two schedulers at two step counts, a short
    # reference.
    set_small_run(page, "LMLSamplerLab", {"samplers": "euler,heun", "steps": "2,3",
                                          "reference_steps": 6, "seed": fresh_seed(),
                                          "schedulers": "karras,exponential"})
    page.locator("[data-testid=queue-button]").first.click()

    page.wait_for_function("id => window.LMLLab?.nodes?.[id]", arg=node_id, timeout=180_000)
    show_node(page, node_id, top=120)
    table = read_drawn(page, "LMLLab", node_id, """(data, info) => {
        const rgb = [1, 3, 5].map(i => parseInt(info.colors.best.slice(i, i + 2), 16));
        let bestPixels = 0, textPixels = 0;
        for (let i = 0; i < data.length; i += 4) {
            if (rgb.every((v, k) => Math.abs(data[i + k] - v) < 12)) bestPixels++;
            if (data[i] > 180 && data[i + 1] > 180 && data[i + 2] > 180) textPixels++;
        }
        return {rows: info.rows, labels: info.labels, best: info.best, bestPixels,
                textPixels};
    }""")
    page.screenshot(path=str(artifact_name(page, "lab_table.png")))

    assert table["rows"] == 8  # a row per sampler and scheduler pair, named by the pair
    assert sorted(set(table["labels"])) == [f"{s} + {c}" for s in ("euler", "heun")
                                            for c in ("exponential", "karras")], table
    # Classic mode draws on the graph canvas; Vue nodes on the widget's own canvas.
    assert table["surface"] == ("graph" if mode == "classic" else "widget"), table
    assert table["isGraphCanvas"] == (mode == "classic"), table
    assert table["inDocument"] and table["shown"], table
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
    assert len(report["rows"]) == 8
    assert sorted(f"{r['label']}@{r['steps']}" for r in report["rows"] if r["best"]) == \
        sorted(table["best"])
    assert lab_errors(page.console_messages) == []
