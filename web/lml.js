// comfyui-lml frontend extension: a per-step diagnostics chart on LML nodes.
//
// KSamplerLML and LMLCompare send {"lml_diagnostics": [{solver, sigmas: [..], strength: [..]}]}
// in their `ui` output.  After a run a small canvas-drawn widget on the node plots
// log(sigma) per step (line) and the strength of the Levenberg-Marquardt correction
// (1 - cosine between corrected and raw direction, bars).  No chart before the first run;
// missing or malformed data leaves the node as it is.  The widget is never serialized, so saved
// workflows and API prompts are unchanged.
//
// The widget's scaffolding (both node renderers, classic and Vue nodes) is on_node_widget.js;
// the draw uses only the y and width it is given, so the coordinates are right in both.
import { app } from "../../scripts/app.js";
import { PANEL_COLORS, beginPanel, drawnRect, registerRunWidget } from "./on_node_widget.js";

const NODES_WITH_DIAGNOSTICS = new Set(["KSamplerLML", "LMLCompare"]);
const WIDGET_NAME = "lml_diagnostics_chart";
const CHART_HEIGHT = 110;
const COLORS = {
  ...PANEL_COLORS,
  sigma: "#4da3ff",
  strength: "#ff9f3d",
  text: "#cfcfcf",
};

// State the page (and the browser test) can inspect: which nodes have a chart, how often and
// where it was last drawn: `rect` is in pixels of `canvas`, the canvas it was drawn on (the
// graph canvas in classic mode, the widget's own canvas with Vue nodes).
const state = (window.LMLDiagnostics = window.LMLDiagnostics || { draws: 0, nodes: {} });

function finiteNumbers(values) {
  if (!Array.isArray(values)) return null;
  return values.map((v) => (typeof v === "number" && Number.isFinite(v) ? v : 0));
}

// The first usable diagnostics entry of a node's ui output, or null.
export function parseDiagnostics(output) {
  const entries = output?.lml_diagnostics;
  const entry = Array.isArray(entries) ? entries[0] : entries;
  if (!entry || typeof entry !== "object") return null;
  const sigmas = finiteNumbers(entry.sigmas);
  const strength = finiteNumbers(entry.strength) ?? [];
  if (!sigmas || sigmas.length === 0) return null;
  const steps = sigmas.length;
  return {
    solver: typeof entry.solver === "string" ? entry.solver : "lml",
    sigmas,
    strength: Array.from({ length: steps }, (_, i) => strength[i] ?? 0),
  };
}

function drawChart(ctx, node, width, y, data) {
  const margin = 10;
  const left = margin;
  const top = y + 2;
  const w = Math.max(20, width - 2 * margin);
  const h = CHART_HEIGHT - 8;
  const plot = { x: left + 4, y: top + 16, w: w - 8, h: h - 22 };
  const steps = data.sigmas.length;

  beginPanel(ctx, left, top, w, h, COLORS);

  // Strength bars, scaled to the largest value (at least 0.01 so noise-level values stay small).
  const maxStrength = Math.max(0.01, ...data.strength);
  const slot = plot.w / steps;
  ctx.fillStyle = COLORS.strength;
  data.strength.forEach((s, i) => {
    const bar = (Math.max(0, s) / maxStrength) * plot.h;
    if (bar > 0) ctx.fillRect(plot.x + i * slot + slot * 0.2, plot.y + plot.h - bar, Math.max(1, slot * 0.6), bar);
  });

  // log(sigma) line, normalised to the plot height (sigma 0 at the last step is clamped).
  const logs = data.sigmas.map((s) => Math.log(Math.max(s, 1e-4)));
  const lo = Math.min(...logs);
  const hi = Math.max(...logs);
  const span = hi - lo || 1;
  ctx.strokeStyle = COLORS.sigma;
  ctx.fillStyle = COLORS.sigma;
  ctx.lineWidth = 2;
  ctx.beginPath();
  logs.forEach((v, i) => {
    const px = plot.x + (i + 0.5) * slot;
    const py = plot.y + plot.h - ((v - lo) / span) * plot.h;
    if (i === 0) ctx.moveTo(px, py);
    else ctx.lineTo(px, py);
  });
  ctx.stroke();
  if (steps === 1) ctx.fillRect(plot.x + 0.5 * slot - 2, plot.y - 2, 4, 4);

  ctx.font = "10px sans-serif";
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillStyle = COLORS.sigma;
  ctx.fillText(`log σ (${data.sigmas[0].toPrecision(3)} → ${data.sigmas[steps - 1].toPrecision(2)})`, left + 4, top + 3);
  ctx.fillStyle = COLORS.strength;
  ctx.textAlign = "right";
  ctx.fillText(`LM strength ≤ ${Math.max(...data.strength).toPrecision(2)}`, left + w - 4, top + 3);
  ctx.restore();

  // Where the chart landed on the canvas, for tests and debugging.
  state.draws += 1;
  const previous = state.nodes[node.id];
  state.nodes[node.id] = {
    type: node.comfyClass ?? node.type,
    solver: data.solver,
    steps,
    run: data.run,
    draws: (previous?.draws ?? 0) + 1,
    rect: drawnRect(ctx, left, top, w, h),
    canvas: ctx.canvas,
    surface: ctx.canvas === app.canvas?.canvas ? "graph" : "widget",
    colors: { sigma: COLORS.sigma, strength: COLORS.strength },
  };
}

registerRunWidget(app, "comfyui-lml.diagnostics", NODES_WITH_DIAGNOSTICS, {
  name: WIDGET_NAME,
  type: "lml_chart",
  key: "lmlDiagnostics",
  label: "diagnostics chart",
  height: () => CHART_HEIGHT,
  draw: drawChart,
}, (output, node) => {
  const data = parseDiagnostics(output);
  if (data) data.run = (node.lmlDiagnostics?.run ?? 0) + 1;
  return data;
});
