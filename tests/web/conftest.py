"""Real ComfyUI servers for the web tests (pack linked in, test checkpoint) and the browser
fixtures, shared by every browser test file.

- ``server``: the host with the frontend it pins (comfyui-frontend-package 1.32.9 on 0.3.75,
  1.49.6 on 0.33.0), one per session, on a port in 8270-8299 so it never collides with the
  integration server.
- ``frontend_servers``: a server per frontend the browser tests run against: the pinned one
  (``server``) and the newest one scripts/install_browser.sh puts in
  ``$LML_HOST_DIR/frontends/<version>`` (a second server started with ComfyUI's
  ``--front-end-root``).
- ``lml_page``: parametrised over frontend x node renderer ("classic" LiteGraph canvas,
  "vue" = Nodes 2.0), ids like ``1.58.1-vue``: a fresh headless chromium profile on that
  server's page, the renderer switched with the frontend's own setting, the console recorded
  (``page.console_messages``) and written to test_artifacts/ at the end.

Playwright drives Debian's /usr/bin/chromium (it never downloads a browser).
"""

import importlib.metadata
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import comfy_host
from harness.comfy_host import ROOT

WEB_PORTS = range(8270, 8300)
ARTIFACTS = ROOT / "test_artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The newest frontend on PyPI when this was written; scripts/install_browser.sh reads the same
# variable.
NEWEST_FRONTEND = os.environ.get("LML_NEWEST_FRONTEND", "1.58.1")
PINNED_FRONTEND = importlib.metadata.version("comfyui-frontend-package")
FRONTENDS = list(dict.fromkeys([PINNED_FRONTEND, NEWEST_FRONTEND]))
MODES = ["classic", "vue"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # reported by the lml_page fixture, with the fix
    sync_playwright = None


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    with comfy_host.ComfyServer(base_dir=tmp_path_factory.mktemp("comfy_web"),
                                ports=WEB_PORTS) as host:
        yield host


def frontend_root(version: str) -> Path:
    return (comfy_host.HOST_DIR / "frontends" / version / "comfyui_frontend_package"
            / "static")


@dataclass
class Frontend:
    version: str
    server: comfy_host.ComfyServer


class FrontendServers:
    """One server per frontend version, started on first use.  The pinned frontend's is
    ``server``; another version gets its own server with --front-end-root, stopped when a
    different version is asked for (pytest runs the tests grouped by version) or at the end."""

    def __init__(self, request, tmp_path_factory):
        self._request = request
        self._tmp = tmp_path_factory
        self._other = None  # (Frontend, ComfyServer context)

    def get(self, version: str) -> Frontend:
        if version == PINNED_FRONTEND:
            return Frontend(version, self._request.getfixturevalue("server"))
        if self._other and self._other.version == version:
            return self._other
        self.close()
        root = frontend_root(version)
        if not (root / "index.html").exists():
            pytest.fail(f"frontend {version} is missing ({root}): run "
                        "scripts/install_browser.sh")
        host = comfy_host.ComfyServer(base_dir=self._tmp.mktemp(f"comfy_web_{version}"),
                                      ports=WEB_PORTS,
                                      extra_args=["--front-end-root", str(root)]).start()
        self._other = Frontend(version, host)
        return self._other

    def close(self):
        other, self._other = self._other, None
        if other is not None:
            other.server.stop()


@pytest.fixture(scope="session")
def frontend_servers(request, tmp_path_factory):
    servers = FrontendServers(request, tmp_path_factory)
    try:
        yield servers
    finally:
        servers.close()


PAGES = [(version, mode) for version in FRONTENDS for mode in MODES]


@pytest.fixture(scope="session", params=PAGES, ids=[f"{v}-{m}" for v, m in PAGES])
def lml_page(request, frontend_servers, tmp_path_factory):
    """A page of one frontend in one node renderer; the test id is ``<version>-<mode>``."""
    version, mode = request.param
    if sync_playwright is None or not Path(CHROMIUM).exists():
        pytest.fail("the browser test needs chromium and pip playwright: run "
                    "scripts/install_browser.sh")
    frontend = frontend_servers.get(version)
    server = frontend.server
    # A user who has seen the first-run template dialog (it would cover the canvas), in the
    # renderer under test.
    server.post_json("/api/settings", {"Comfy.TutorialCompleted": True,
                                       "Comfy.VueNodes.Enabled": mode == "vue"})
    ARTIFACTS.mkdir(exist_ok=True)
    label = f"{version}-{mode}"
    console = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh user-data-dir
            executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 900})
        page = context.pages[0] if context.pages else context.new_page()
        page.on("console", lambda m: console.append(
            {"type": m.type, "text": m.text, "url": m.location.get("url", "")}))
        page.on("pageerror", lambda e: console.append(
            {"type": "pageerror", "text": f"{e}\n{getattr(e, 'stack', '')}", "url": ""}))
        page.goto(server.url + "/", wait_until="domcontentloaded")
        page.wait_for_function("window.app?.graph && window.app?.canvas && "
                               "window.app.extensionManager && "
                               "window.app.extensions?.length > 0", timeout=120_000)
        set_vue_nodes(page, mode == "vue")
        page.console_messages = console
        page.lml = {"version": version, "mode": mode, "label": label, "server": server}
        try:
            yield page
        finally:
            (ARTIFACTS / f"browser_console_{label}.json").write_text(
                json.dumps(console, indent=1))
            context.close()


def set_vue_nodes(page, enabled: bool):
    """Switch the node renderer with the frontend's own setting, and wait until it is on."""
    page.evaluate("on => app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on)",
                  enabled)
    page.wait_for_function("on => app.extensionManager.setting.get('Comfy.VueNodes.Enabled') "
                           "=== on && (window.LiteGraph?.vueNodesMode ?? on) === on",
                           arg=enabled, timeout=20_000)


def artifact_name(page, name: str) -> Path:
    return ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', page.lml['label'])}_{name}"


def set_small_run(page, node_type: str, values: dict):
    """Set the loaded workflow up for a small run, as a user edits the widgets: the test
    checkpoint, 64x64 empty latents, and ``values`` (widget name -> value) on the nodes of
    ``node_type`` (a seed stays fixed after the run)."""
    page.evaluate("""([ckpt, type, values]) => {
        const set = (node, name, value) => {
            const widget = node.widgets.find(w => w.name === name);
            widget.value = value;
            widget.callback?.(value);
        };
        for (const node of app.graph.nodes) {
            if (node.type === 'CheckpointLoaderSimple') set(node, 'ckpt_name', ckpt);
            if (node.type === 'EmptyLatentImage') {
                set(node, 'width', 64);
                set(node, 'height', 64);
            }
            if (node.type !== type) continue;
            for (const [name, value] of Object.entries(values)) set(node, name, value);
            node.widgets.find(w => w.name === 'seed')?.linkedWidgets?.forEach(w => {
                if (w.name === 'control_after_generate') w.value = 'fixed';
            });
        }
        app.canvas.setDirty(true, true);
    }""", [comfy_host.CHECKPOINT_NAME, node_type, values])


def feed_bad_outputs(page, node_type: str, widget: str, state: str, key: str, outputs: list):
    """Add a ``node_type`` node, call its onExecuted with each of ``outputs`` (bad or missing
    ui data), redraw, remove it; return its run widget's {widgets, height} before and after,
    whether the extension's ``window[state]`` recorded a draw and the node's ``key`` data."""
    return page.evaluate("""async ([type, name, state, key, outputs]) => {
        const node = LiteGraph.createNode(type);
        app.graph.add(node);
        const widget = () => node.widgets.find(w => w.name === name);
        const before = {widgets: node.widgets.length, height: widget().computeSize(300)[1]};
        for (const output of [undefined, ...outputs]) node.onExecuted(output);
        await new Promise(resolve => setTimeout(resolve, 300));
        app.canvas.draw(true, true);
        const after = {widgets: node.widgets.length, height: widget().computeSize(300)[1]};
        const drawn = Boolean(window[state]?.nodes?.[node.id]);
        app.graph.remove(node);
        return {before, after, drawn, data: node[key] ?? null};
    }""", [node_type, widget, state, key, outputs])


def show_node(page, node_id, top=190):
    """The node near the top left of the canvas, at 100% zoom."""
    page.evaluate("""([id, top]) => {
        const node = app.graph.getNodeById(id);
        app.canvas.ds.scale = 1;
        app.canvas.ds.offset = [120 - node.pos[0], top - node.pos[1]];
        app.canvas.setDirty(true, true);
    }""", [node_id, top])
    page.wait_for_timeout(700)


def read_drawn(page, state: str, node_id, count: str) -> dict:
    """Redraw the graph canvas, then read the pixels inside the rectangle the extension
    (``window[state]``) reports for the node's last draw, on the canvas it drew on (the graph
    canvas, or the widget's own with Vue nodes).  Returns ``count(data, info)`` (a JS function
    of the RGBA bytes and the extension's record) with where and on what it was drawn."""
    return page.evaluate("""([state, id]) => {
        const count = """ + count + """;
        app.canvas.draw(true, true);
        const info = window[state].nodes[id];
        const canvas = info.canvas;
        const [x, y, w, h] = info.rect.map(Math.round);
        const x0 = Math.max(0, x), y0 = Math.max(0, y);
        const x1 = Math.min(canvas.width, x + w), y1 = Math.min(canvas.height, y + h);
        const data = canvas.getContext('2d').getImageData(x0, y0, x1 - x0, y1 - y0).data;
        const box = canvas.getBoundingClientRect();
        return {...count(data, info), surface: info.surface,
                isGraphCanvas: canvas === app.canvas.canvas, inDocument: canvas.isConnected,
                shown: box.width > 100 && box.height > 50, rect: info.rect,
                visible: [x1 - x0, y1 - y0]};
    }""", [state, node_id])
