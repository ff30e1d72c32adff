// Flash-GRPO front-end extension: a live chart on the trainer node (reward mean +- std, loss per
// iteration, run status), the latest held-out preview samples of a run (preview_every; an animated
// WebP from GET /flash_grpo/runs/{run}/samples/{file}), and the text a node returns in ui.text
// (scores table, run result, LoRA metadata, step k of each group) drawn on the scorer, trainer, LoRA
// loader and group sampler. Fed by "flash_grpo.progress" messages from the server; after a page
// reload the history comes from GET /flash_grpo/runs/{run}/events (the run name is kept in the
// node's properties).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TRAINER = "FlashGRPOTrainer";
const SCORER = "FlashGRPORewardScorer";
// Nodes whose ui.text the stock front end would not draw, with the text shown before a run.
const TEXT_NODES = {
  [SCORER]: "scores appear here after a run",
  [TRAINER]: "",
  FlashGRPOLoraLoader: "how the LoRA was trained appears here",
  FlashGRPOGroupSampler: "the step k of each group appears here",
};
const RUN_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const CHART_HEIGHT = 190;
const PREVIEW_HEIGHT = 150;
const SAMPLE_RE = /^preview_\d{5}\.(webp|png)$/;

function chartState(node) {
  if (!node.__flashGrpo) {
    node.__flashGrpo = { run: null, total: 0, status: "idle", points: [], message: "", preview: null };
  }
  return node.__flashGrpo;
}

function addPoint(state, e) {
  if (e.event !== "iteration" || typeof e.iteration !== "number") return;
  const p = { it: e.iteration + 1, mean: e.reward_mean, std: e.reward_std || 0, loss: e.loss };
  const i = state.points.findIndex((q) => q.it === p.it);
  if (i >= 0) state.points[i] = p;
  else state.points.push(p);
  state.points.sort((a, b) => a.it - b.it);
}

function applyEvent(state, e) {
  if (!e || typeof e !== "object") return;
  addPoint(state, e);
  if (e.event === "preview" && typeof e.file === "string" && SAMPLE_RE.test(e.file)) {
    state.preview = { file: e.file, done: e.iterations_done, reward: e.eval_reward_mean };
  }
  if (e.iterations) state.total = e.iterations;
  if (e.event === "queued" || e.event === "start" || e.event === "iteration") state.status = "running";
  if (e.event === "done") state.status = "done";
  if (e.event === "cancelled") state.status = "cancelled (checkpoint kept; resume to continue)";
  if (e.event === "error") { state.status = "error"; state.message = e.message || ""; }
}

function finite(values) {
  return values.filter((v) => typeof v === "number" && Number.isFinite(v));
}

function draw(node) {
  const state = chartState(node);
  const canvas = node.__flashGrpoCanvas;
  if (!canvas) return;
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(canvas.clientWidth || 300, 100);
  const height = CHART_HEIGHT;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(0, 0, width, height);
  const pts = state.points;
  const last = pts[pts.length - 1];
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#ddd";
  const head = state.run ? `${state.run}: ${state.status}` : "no run yet: queue the workflow";
  ctx.fillText(head.slice(0, 80), 6, 13);
  if (last) {
    const sub = `it ${last.it}/${state.total || "?"}  reward ${last.mean.toFixed(4)} +- ${last.std.toFixed(4)}` +
      (typeof last.loss === "number" ? `  loss ${last.loss.toExponential(2)}` : "");
    ctx.fillText(sub, 6, 27);
  } else if (state.message) {
    ctx.fillText(state.message.slice(0, 80), 6, 27);
  }
  const x0 = 36, y0 = 34, w = width - x0 - 8, h = height - y0 - 16;
  ctx.strokeStyle = "#444";
  ctx.strokeRect(x0, y0, w, h);
  if (pts.length === 0) return;
  const lo = Math.min(...finite(pts.map((p) => p.mean - p.std)));
  const hi = Math.max(...finite(pts.map((p) => p.mean + p.std)));
  const span = hi - lo || 1;
  const n = Math.max(state.total || 0, pts[pts.length - 1].it, 2);
  const X = (it) => x0 + (w * (it - 1)) / Math.max(n - 1, 1);
  const Y = (v) => y0 + h - (h * (v - lo)) / span;
  // reward spread band
  ctx.fillStyle = "rgba(80,160,255,0.25)";
  ctx.beginPath();
  pts.forEach((p, i) => (i ? ctx.lineTo(X(p.it), Y(p.mean + p.std)) : ctx.moveTo(X(p.it), Y(p.mean + p.std))));
  for (let i = pts.length - 1; i >= 0; i--) ctx.lineTo(X(pts[i].it), Y(pts[i].mean - pts[i].std));
  ctx.closePath();
  ctx.fill();
  // reward mean
  ctx.strokeStyle = "#50a0ff";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  pts.forEach((p, i) => (i ? ctx.lineTo(X(p.it), Y(p.mean)) : ctx.moveTo(X(p.it), Y(p.mean))));
  ctx.stroke();
  ctx.fillStyle = "#50a0ff";
  pts.forEach((p) => ctx.fillRect(X(p.it) - 1.5, Y(p.mean) - 1.5, 3, 3));
  // loss on its own scale
  const losses = finite(pts.map((p) => p.loss));
  if (losses.length) {
    const llo = Math.min(...losses), lhi = Math.max(...losses), lspan = lhi - llo || 1;
    ctx.strokeStyle = "#ffa040";
    ctx.lineWidth = 1;
    ctx.beginPath();
    let started = false;
    pts.forEach((p) => {
      if (typeof p.loss !== "number") return;
      const y = y0 + h - (h * (p.loss - llo)) / lspan;
      if (started) ctx.lineTo(X(p.it), y); else { ctx.moveTo(X(p.it), y); started = true; }
    });
    ctx.stroke();
  }
  ctx.fillStyle = "#aaa";
  ctx.fillText(hi.toFixed(3), 2, y0 + 9);
  ctx.fillText(lo.toFixed(3), 2, y0 + h);
  ctx.fillStyle = "#50a0ff";
  ctx.fillText("reward mean +- std", x0 + 4, height - 3);
  ctx.fillStyle = "#ffa040";
  ctx.fillText("loss", x0 + 120, height - 3);
}

function showPreview(node) {
  // The latest held-out preview samples of the run, under the chart (animated WebP).
  const state = chartState(node);
  const box = node.__flashGrpoPreview;
  if (!box) return;
  const p = state.preview;
  if (!p || !state.run || !RUN_RE.test(state.run)) {
    box.style.display = "none";
    return;
  }
  const src = api.apiURL(`/flash_grpo/runs/${encodeURIComponent(state.run)}/samples/${encodeURIComponent(p.file)}`);
  if (box.__src !== src) {
    box.__src = src;
    box.querySelector("img").src = src;
  }
  const reward = typeof p.reward === "number" ? `  held-out reward ${p.reward.toFixed(4)}` : "";
  box.querySelector("span").textContent = `held-out samples after ${p.done ?? "?"} iterations${reward}`;
  if (box.style.display !== "block") {
    box.style.display = "block";
    // make room for the preview the first time one arrives
    const size = node.computeSize?.();
    if (size && node.size && node.size[1] < size[1]) node.setSize?.([node.size[0], size[1]]);
    app.graph?.setDirtyCanvas?.(true, true);
  }
}

async function loadHistory(node, run) {
  if (!run || !RUN_RE.test(run)) return;
  const state = chartState(node);
  try {
    const res = await api.fetchApi(`/flash_grpo/runs/${encodeURIComponent(run)}/events`);
    if (!res.ok) return; // an old run deleted from disk: keep the empty chart
    const data = await res.json();
    state.run = run;
    if (data.total) state.total = data.total;
    (data.events || []).forEach((e) => applyEvent(state, e));
    if (data.status === "running") state.status = "running";
    else if (state.status === "idle" || state.status === "running") state.status = data.status || "finished";
    draw(node);
    showPreview(node);
  } catch (err) {
    console.warn("flash_grpo: could not load run history", err);
  }
}

async function attachRunning(node) {
  // A run still going on this node (the page was reloaded before its name was saved).
  try {
    const res = await api.fetchApi("/flash_grpo/runs");
    if (!res.ok) return;
    const data = await res.json();
    const run = (data.runs || []).find((r) => r.status === "running" && String(r.node) === String(node.id));
    if (run) {
      node.properties = node.properties || {};
      node.properties.flash_grpo_run = run.run;
      await loadHistory(node, run.run);
    }
  } catch (err) {
    console.warn("flash_grpo: could not list runs", err);
  }
}

function setupTrainer(node) {
  const canvas = document.createElement("canvas");
  canvas.style.width = "100%";
  canvas.style.height = `${CHART_HEIGHT}px`;
  node.__flashGrpoCanvas = canvas;
  node.addDOMWidget("flash_grpo_chart", "flash_grpo_chart", canvas, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => CHART_HEIGHT,
    getMaxHeight: () => CHART_HEIGHT,
  });
  const box = document.createElement("div");
  box.style.cssText = "display:none;font:11px sans-serif;color:#ddd;background:#1b1b1b;text-align:center;";
  const img = document.createElement("img");
  img.style.cssText = `max-width:100%;max-height:${PREVIEW_HEIGHT - 16}px;image-rendering:pixelated;`;
  box.append(img, document.createElement("br"), document.createElement("span"));
  node.__flashGrpoPreview = box;
  node.addDOMWidget("flash_grpo_preview", "flash_grpo_preview", box, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => (chartState(node).preview ? PREVIEW_HEIGHT : 0),
  });
  chartState(node);
  requestAnimationFrame(() => draw(node));
}

function setupText(node, placeholder) {
  const pre = document.createElement("pre");
  pre.style.cssText = "margin:0;font:11px monospace;color:#ddd;background:#1b1b1b;overflow:auto;max-height:160px;white-space:pre-wrap;";
  pre.textContent = placeholder;
  node.__flashGrpoTable = pre;
  node.addDOMWidget("flash_grpo_table", "flash_grpo_table", pre, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => (placeholder ? 80 : 40),
  });
}

function trainerNodes() {
  return (app.graph?._nodes || []).filter((n) => n.comfyClass === TRAINER || n.type === TRAINER);
}

function onProgress(ev) {
  const d = ev.detail;
  if (!d || !d.event) return;
  let node = app.graph?.getNodeById?.(Number(d.node)) || app.graph?.getNodeById?.(d.node);
  if (!node || !node.__flashGrpoCanvas) node = trainerNodes().find((n) => n.properties?.flash_grpo_run === d.run);
  if (!node || !node.__flashGrpoCanvas) return;
  const state = chartState(node);
  if (state.run !== d.run) {
    // First message of this run on this page (a new run, or a reload mid-run): backfill history.
    state.run = d.run;
    state.points = [];
    state.message = "";
    state.preview = null;
    loadHistory(node, d.run);
  }
  if (d.total) state.total = d.total;
  node.properties = node.properties || {};
  node.properties.flash_grpo_run = d.run;
  applyEvent(state, d.event);
  draw(node);
  showPreview(node);
}

app.registerExtension({
  name: "flash_grpo.chart",

  setup() {
    api.addEventListener("flash_grpo.progress", onProgress);
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === TRAINER) {
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = created?.apply(this, arguments);
        setupTrainer(this);
        return r;
      };
      const resized = nodeType.prototype.onResize;
      nodeType.prototype.onResize = function () {
        const r = resized?.apply(this, arguments);
        draw(this);
        return r;
      };
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        const r = executed?.apply(this, arguments);
        const run = message?.flash_grpo_run?.[0]?.run;
        if (run) {
          this.properties = this.properties || {};
          this.properties.flash_grpo_run = run;
        }
        return r;
      };
    }
    if (nodeData.name in TEXT_NODES) {
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = created?.apply(this, arguments);
        setupText(this, TEXT_NODES[nodeData.name]);
        return r;
      };
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        const r = executed?.apply(this, arguments);
        if (this.__flashGrpoTable && Array.isArray(message?.text)) {
          this.__flashGrpoTable.textContent = message.text.join("\n");
        }
        return r;
      };
    }
  },

  loadedGraphNode(node) {
    if (node.comfyClass !== TRAINER && node.type !== TRAINER) return;
    if (node.properties?.flash_grpo_run) loadHistory(node, node.properties.flash_grpo_run);
    else attachRunning(node);
  },
});
