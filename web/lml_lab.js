// comfyui-lml: the LML Sampler Lab's report as a table on the node.
//
// LMLSamplerLab sends {"lml_lab": [report]} in its `ui` output (report: {reference, metric,
// rows: [{sampler, scheduler, label, steps, nfe, error, psnr, seconds, best}], notes}).  After a
// run a canvas-drawn widget lists the rows, sorted by model calls, each named by its label (the
// sampler, or the sampler and scheduler pair "dpmpp_2m + karras" where the study compares
// schedulers; a report without labels names the sampler); the rows marked `best` (for their
// NFE, no other row reaches a lower error with as few model calls) are highlighted.  No table
// before the first run; missing or malformed data leaves the node as it is.  The widget is never
// serialized, so saved workflows and API prompts are unchanged.  The widget's scaffolding (both
// node renderers, classic and Vue nodes) is on_node_widget.js, shared with lml.js.
import { app } from "../../scripts/app.js";
import { PANEL_COLORS, beginPanel, drawnRect, registerRunWidget } from "./on_node_widget.js";

const NODE_TYPE = "LMLSamplerLab";
const WIDGET_NAME = "lml_lab_table";
const ROW_HEIGHT = 16;
const HEADER_HEIGHT = 38;
const FOOTER_HEIGHT = 8;
const COLORS = {
  ...PANEL_COLORS,
  header: "#9aa0aa",
  text: "#d8d8d8",
  best: "#1f5e3a",
  bestText: "#7dffa8",
  title: "#ff9f3d",
};
const COLUMNS = [
  { key: "label", label: "sampler", width: 0.4, align: "left" },
  { key: "steps", label: "steps", width: 0.09, align: "right" },
  { key: "nfe", label: "NFE", width: 0.09, align: "right" },
  { key: "error", label: "RMS error", width: 0.16, align: "right" },
  { key: "psnr", label: "PSNR dB", width: 0.13, align: "right" },
  { key: "seconds", label: "s", width: 0.13, align: "right" },
];

// State the page (and the browser test) can inspect: the table of each node and where it was
// last drawn, in canvas pixels.
const state = (window.LMLLab = window.LMLLab || { draws: 0, nodes: {} });

const isNumber = (v) => typeof v === "number" && Number.isFinite(v);

// The report of a node's ui output (an object or its JSON text), or null.
export function parseReport(output) {
  const entries = output?.lml_lab;
  let report = Array.isArray(entries) ? entries[0] : entries;
  if (typeof report === "string") {
    try {
      report = JSON.parse(report);
    } catch {
      return null;
    }
  }
  if (!report || typeof report !== "object" || !Array.isArray(report.rows)) return null;
  const rows = report.rows
    .filter((r) => r && typeof r.sampler === "string" && isNumber(r.nfe))
    .map((r) => ({
      sampler: r.sampler,
      scheduler: typeof r.scheduler === "string" ? r.scheduler : null,
      label: typeof r.label === "string" && r.label ? r.label : r.sampler,
      steps: isNumber(r.steps) ? r.steps : null,
      nfe: r.nfe,
      error: isNumber(r.error) ? r.error : null,
      psnr: isNumber(r.psnr) ? r.psnr : null,
      seconds: isNumber(r.seconds) ? r.seconds : null,
      best: r.best === true,
      stochastic: r.stochastic === true,
    }))
    .sort((a, b) => a.nfe - b.nfe || (a.error ?? Infinity) - (b.error ?? Infinity));
  if (rows.length === 0) return null;
  const reference = report.reference && typeof report.reference === "object" ? report.reference : {};
  return { rows, reference, notes: Array.isArray(report.notes) ? report.notes : [] };
}

function cellText(row, key) {
  const value = row[key];
  if (key === "label") return row.stochastic ? `${value} *` : value;
  if (value === null || value === undefined) return key === "psnr" ? "=" : "-";
  if (key === "error") return value.toPrecision(3);
  if (key === "psnr") return value.toFixed(1);
  if (key === "seconds") return value.toFixed(2);
  return String(value);
}

function tableHeight(data) {
  return HEADER_HEIGHT + data.rows.length * ROW_HEIGHT + FOOTER_HEIGHT;
}

function drawTable(ctx, node, width, y, data) {
  const margin = 10;
  const left = margin;
  const top = y + 2;
  const w = Math.max(120, width - 2 * margin);
  const h = tableHeight(data) - 4;

  beginPanel(ctx, left, top, w, h, COLORS);

  ctx.font = "11px sans-serif";
  ctx.textBaseline = "middle";
  const ref = data.reference;
  ctx.fillStyle = COLORS.title;
  ctx.textAlign = "left";
  const title = `vs ${ref.sampler ?? "reference"} ${ref.steps ?? ""} steps` +
    "  ·  highlighted: best at its NFE";
  ctx.fillText(title, left + 6, top + 10, w - 12);

  const xs = [];
  let x = left + 6;
  for (const column of COLUMNS) {
    xs.push([x, x + column.width * (w - 12)]);
    x += column.width * (w - 12);
  }
  const drawRow = (values, rowY, color) => {
    ctx.fillStyle = color;
    COLUMNS.forEach((column, i) => {
      const [x0, x1] = xs[i];
      ctx.textAlign = column.align;
      ctx.fillText(values[i], column.align === "left" ? x0 : x1 - 4, rowY, x1 - x0 - 4);
    });
  };
  drawRow(COLUMNS.map((c) => c.label), top + 27, COLORS.header);

  data.rows.forEach((row, i) => {
    const rowTop = top + HEADER_HEIGHT - 4 + i * ROW_HEIGHT;
    if (row.best) {
      ctx.fillStyle = COLORS.best;
      ctx.fillRect(left + 2, rowTop, w - 4, ROW_HEIGHT);
    }
    drawRow(COLUMNS.map((c) => cellText(row, c.key)), rowTop + ROW_HEIGHT / 2,
      row.best ? COLORS.bestText : COLORS.text);
  });
  ctx.restore();

  // Where the table landed on the canvas (the graph canvas in classic mode, the widget's own
  // canvas with Vue nodes), for tests and debugging.
  state.draws += 1;
  state.nodes[node.id] = {
    rows: data.rows.length,
    best: data.rows.filter((r) => r.best).map((r) => `${r.label}@${r.steps}`),
    labels: data.rows.map((r) => r.label),
    rect: drawnRect(ctx, left, top, w, h),
    canvas: ctx.canvas,
    surface: ctx.canvas === app.canvas?.canvas ? "graph" : "widget",
    colors: { best: COLORS.best },
  };
}

registerRunWidget(app, "comfyui-lml.lab", new Set([NODE_TYPE]), {
  name: WIDGET_NAME,
  type: "lml_lab_table",
  key: "lmlLab",
  label: "Lab's table",
  minWidth: 360,
  height: tableHeight,
  draw: drawTable,
}, parseReport);
