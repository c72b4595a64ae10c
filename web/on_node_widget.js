// comfyui-lml: the scaffolding of a canvas-drawn, never-serialized widget that shows a node's
// last run (lml.js: the diagnostics chart; lml_lab.js: the Lab's table).  ComfyUI loads every
// .js file of the pack as an extension; this one only exports functions and registers nothing.
//
// The widget works in both node renderers of the ComfyUI frontend:
//   - classic (LiteGraph) canvas: LGraphNode.drawWidgets calls draw(ctx, node, width, y, H) on
//     the graph canvas, translated to the node's origin; y is the widget's offset in the node;
//   - Vue nodes ("Nodes 2.0", setting Comfy.VueNodes.Enabled): WidgetLegacy.vue gives the
//     widget its own <canvas> and calls draw(ctx, node, width, 1, height) on it, but only on
//     mount, resize, palette change and widget.triggerDraw().  So after every run we call
//     triggerDraw (set by that renderer only) as well as marking the graph canvas dirty.
// The widget is added when the node is created, not at the first run: the Vue-nodes renderer
// of older frontends (1.32) only mounts the widgets a node has when it is added to the graph.
// Until the first run it takes no height and draws nothing.

// The panel colours both widgets draw on.
export const PANEL_COLORS = { background: "#1e1e24", border: "#555" };

// Canvas coordinates (x, y) in pixels of the canvas, through the context's transform.
export function toPixels(transform, x, y) {
  return [transform.a * x + transform.c * y + transform.e, transform.b * x + transform.d * y + transform.f];
}

// Where the box (left, top, w, h) of the current drawing lands on ctx's canvas, in pixels.
export function drawnRect(ctx, left, top, w, h) {
  const t = ctx.getTransform();
  const [x0, y0] = toPixels(t, left, top);
  const [x1, y1] = toPixels(t, left + w, top + h);
  return [x0, y0, x1 - x0, y1 - y0];
}

// Start drawing a panel: save the context and draw the box (left, top, w, h) in
// colors.background with a colors.border frame.  The caller ends with ctx.restore().
export function beginPanel(ctx, left, top, w, h, colors) {
  ctx.save();
  ctx.fillStyle = colors.background;
  ctx.strokeStyle = colors.border;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.rect(left, top, w, h);
  ctx.fill();
  ctx.stroke();
}

// The node's widget `spec.name`, added if missing.  spec: {name, type, key (the node property
// holding the last run's data), height(data), draw(ctx, node, width, y, data)}.
export function ensureWidget(node, spec) {
  let widget = node.widgets?.find((w) => w.name === spec.name);
  if (widget) return widget;
  widget = {
    name: spec.name,
    type: spec.type, // a type of our own: a Vue component for a known type would replace draw
    value: null,
    serialize: false, // not in the saved workflow's widgets_values
    options: { serialize: false }, // not in the API prompt
    computeSize(width) {
      return [width ?? 200, node[spec.key] ? spec.height(node[spec.key]) : 0];
    },
    draw(ctx, drawNode, width, y) {
      if (drawNode[spec.key]) spec.draw(ctx, drawNode, width, y, drawNode[spec.key]);
    },
  };
  return node.addCustomWidget(widget) ?? widget;
}

// Show a new run's data: store it, size the widget and the node (classic canvas: the chart
// fits below the other widgets), and redraw in both renderers.
export function showRun(node, spec, data) {
  node[spec.key] = data;
  const widget = ensureWidget(node, spec);
  // The height LiteGraph's layout would give it now (the Vue renderer reads this value, which
  // the classic layout only refreshes when it draws the node).
  widget.computedHeight = widget.computeSize(node.size[0])[1] + 4;
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0], spec.minWidth ?? 0), Math.max(node.size[1], size[1])]);
  widget.triggerDraw?.(); // Vue nodes: redraw the widget's own canvas now
  node.setDirtyCanvas?.(true, true); // classic canvas: redrawn on the next frame
  return widget;
}

// Register an extension that gives the nodes of `nodeTypes` the widget `spec` and fills it
// from each run's ui output with `parse(output, node)` (null: leave the node as it is).
export function registerRunWidget(app, extensionName, nodeTypes, spec, parse) {
  const label = spec.label ?? spec.name;
  app.registerExtension({
    name: extensionName,
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (!nodeTypes.has(nodeData?.name)) return;
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        try {
          ensureWidget(this, spec);
        } catch (error) {
          console.warn(`[comfyui-lml] could not add the ${label}:`, error);
        }
        return result;
      };
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output) {
        const result = onExecuted?.apply(this, arguments);
        try {
          const data = parse(output, this);
          if (data) showRun(this, spec, data);
        } catch (error) {
          console.warn(`[comfyui-lml] could not show the ${label}:`, error);
        }
        return result;
      };
    },
  });
}
