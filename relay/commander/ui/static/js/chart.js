// Metric curves as SVG: one polyline per lease (colour = pod), dashed lines where the run changed hands.
//
// Hand-drawn rather than a charting library: the dashboard must ship every file itself, and a line
// chart over at most a few thousand points needs scales, ticks and a polyline, not a dependency.

import { el, svg, num } from "./util.js";

const W = 640;
const H = 210;
const PAD = { left: 58, right: 14, top: 12, bottom: 26 };

/** Preferred order of the curves; any other metric follows, alphabetically. */
export const PREFERRED = ["loss", "learning_rate", "tokens_per_s", "reward", "kl"];
const TITLES = { loss: "Loss", learning_rate: "Learning rate", tokens_per_s: "Tokens / s", reward: "Reward", kl: "KL" };
const MAX_CHARTS = 8;

/** Metric names present in the history, in display order. */
export function metricNames(history) {
  const seen = new Set();
  for (const point of history) for (const [key, value] of Object.entries(point.metrics)) if (value !== null) seen.add(key);
  const rest = [...seen].filter((k) => !PREFERRED.includes(k)).sort();
  return [...PREFERRED.filter((k) => seen.has(k)), ...rest].slice(0, MAX_CHARTS);
}

function ticks(lo, hi, count) {
  if (hi === lo) return [lo];
  const step = (hi - lo) / (count - 1);
  return Array.from({ length: count }, (_, i) => lo + i * step);
}

/**
 * Draw one metric: points [{step, epoch, value}] in step order; pods: epoch -> {worker_id, lane};
 * handoffs: [{step, epoch, worker_id}] where a new lease's points begin.
 */
export function drawChart(name, points, pods, handoffs) {
  const xs = points.map((p) => p.step);
  const ys = points.map((p) => p.value);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.1, y1 + Math.abs(y1 || 1) * 0.1];
  const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const py = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);

  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart-svg", "data-metric": name,
    "data-points": points.length, "aria-label": `${TITLES[name] || name} by step` });
  const axis = svg("g", { class: "axis" });
  for (const y of ticks(y0, y1, 4)) {
    axis.append(svg("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: py(y), y2: py(y) }),
      svg("text", { class: "tick", x: PAD.left - 6, y: py(y) + 3.5, "text-anchor": "end" }, num(y)));
  }
  for (const x of ticks(x0, x1, 5)) {
    axis.append(svg("text", { class: "tick", x: px(x), y: H - 8, "text-anchor": "middle" }, String(Math.round(x))));
  }
  axis.append(svg("line", { class: "axis-line", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
  root.append(axis);

  for (const handoff of handoffs) {
    const x = px(handoff.step);
    root.append(svg("line", { class: "handoff", x1: x, x2: x, y1: PAD.top, y2: H - PAD.bottom, "data-epoch": handoff.epoch }),
      svg("text", { class: "handoff-label", x: x + 4, y: PAD.top + 10 }, `epoch ${handoff.epoch} · ${handoff.worker_id || "?"}`));
  }

  const byEpoch = new Map();
  for (const p of points) {
    if (!byEpoch.has(p.epoch)) byEpoch.set(p.epoch, []);
    byEpoch.get(p.epoch).push(p);
  }
  for (const [epoch, group] of byEpoch) {
    const lane = pods.get(epoch)?.lane ?? 0;
    const coords = group.map((p) => `${px(p.step).toFixed(1)},${py(p.value).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { class: `series pod${lane % 6}`, points: coords, "data-epoch": epoch },
      svg("title", {}, `epoch ${epoch} · ${pods.get(epoch)?.worker_id || "?"}: ${group.length} points`)));
  }
  const last = points[points.length - 1];
  return el("div", { class: "chart", "data-metric": name },
    el("h3", {}, TITLES[name] || name, el("span", { class: "last" }, `step ${last.step}: ${num(last.value)}`)), root);
}

/** Every chart of a run: metrics history -> one chart per metric, with the pods and handoffs of its leases. */
export function drawCharts(history, leases) {
  const pods = new Map();
  const lanes = new Map();
  for (const lease of leases) {
    if (!lanes.has(lease.worker_id)) lanes.set(lease.worker_id, lanes.size);
    pods.set(lease.epoch, { worker_id: lease.worker_id, lane: lanes.get(lease.worker_id) });
  }
  // Lease by lease: a new pod resumes from its checkpoint, so its steps may repeat the previous pod's last ones.
  const ordered = [...history].sort((a, b) => a.epoch - b.epoch || a.step - b.step || a.ts - b.ts);
  const charts = [];
  for (const name of metricNames(ordered)) {
    const points = ordered.filter((p) => p.metrics[name] !== null && p.metrics[name] !== undefined)
      .map((p) => ({ step: p.step, epoch: p.epoch, value: p.metrics[name] }));
    const handoffs = [];
    for (let i = 1; i < points.length; i += 1) {
      if (points[i].epoch !== points[i - 1].epoch) {
        handoffs.push({ step: points[i].step, epoch: points[i].epoch, worker_id: pods.get(points[i].epoch)?.worker_id });
      }
    }
    if (points.length) charts.push(drawChart(name, points, pods, handoffs));
  }
  return charts;
}
