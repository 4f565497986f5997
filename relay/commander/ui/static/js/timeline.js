// The lease timeline: one lane per pod, one bar per epoch, coloured by how the lease ended, labelled with
// the steps it carried; a table under it says the same in words.

import { clock, duration, el, svg, show, when } from "./util.js";
import { OUTCOMES } from "./adapt.js";

const W = 960;
const LANE = 30;
const LABEL_W = 150;
const TOP = 6;
const AXIS = 22;

function steps(lease) {
  if (lease.first_step === null && lease.last_step === null) return "no steps reported";
  if (lease.first_step === lease.last_step) return `step ${lease.last_step}`;
  return `steps ${show(lease.first_step)}→${show(lease.last_step)}`;
}

function ended(lease) {
  return lease.ended_at ?? clock.now();
}

/** The SVG timeline of ``leases`` (see adapt.leaseHistory). */
export function drawTimeline(leases) {
  const lanes = [];
  for (const lease of leases) if (!lanes.includes(lease.worker_id)) lanes.push(lease.worker_id);
  const t0 = Math.min(...leases.map((l) => l.granted_at));
  const t1 = Math.max(...leases.map(ended), ...leases.map((l) => l.fenced_at || 0), t0 + 1);
  const x = (t) => LABEL_W + ((t - t0) / (t1 - t0)) * (W - LABEL_W - 10);
  const height = TOP + lanes.length * LANE + AXIS;
  const root = svg("svg", { viewBox: `0 0 ${W} ${height}`, class: "timeline", role: "img",
    "aria-label": "lease timeline", "data-bars": leases.length });

  lanes.forEach((worker, i) => {
    const y = TOP + i * LANE;
    root.append(svg("line", { class: "grid", x1: LABEL_W, x2: W - 10, y1: y + LANE - 2, y2: y + LANE - 2 }),
      svg("text", { class: "lane-label", x: 4, y: y + LANE / 2 + 4 }, clip(worker || "?", 20)));
  });
  for (const lease of leases) {
    const y = TOP + lanes.indexOf(lease.worker_id) * LANE + 4;
    const left = x(lease.granted_at);
    const width = Math.max(3, x(ended(lease)) - left);
    const label = `epoch ${lease.epoch} · ${steps(lease)} · ${lease.outcome}`;
    const bar = svg("rect", { class: `lease-bar ${lease.outcome}`, x: left, y, width, height: LANE - 10, rx: 3,
      "data-epoch": lease.epoch, "data-worker": lease.worker_id, "data-outcome": lease.outcome },
      svg("title", {}, `${lease.worker_id}: ${label}, ${when(lease.granted_at)} – ${lease.ended_at ? when(lease.ended_at) : "now"}`
        + (lease.fenced_at ? `; its holder was fenced off at ${when(lease.fenced_at)}` : "")));
    root.append(bar);
    if (lease.fenced_at) {
      const fx = x(Math.min(lease.fenced_at, t1));
      root.append(svg("line", { class: "fenced-mark", x1: fx, x2: fx, y1: y - 3, y2: y + LANE - 7, "data-epoch": lease.epoch },
        svg("title", {}, `${lease.worker_id} called after its lease ended and was fenced off (${when(lease.fenced_at)})`)));
    }
    if (width > label.length * 6.2) root.append(svg("text", { class: "bar-label", x: left + 6, y: y + 14 }, label));
    else if (width > 40) root.append(svg("text", { class: "bar-label", x: left + 4, y: y + 14 }, `e${lease.epoch}`));
  }
  const axisY = TOP + lanes.length * LANE + 15;
  for (let i = 0; i <= 4; i += 1) {
    const t = t0 + ((t1 - t0) * i) / 4;
    root.append(svg("text", { class: "tick", x: x(t), y: axisY, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, when(t)));
  }
  return root;
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

export function legend(leases) {
  const used = new Set(leases.map((l) => l.outcome));
  return el("div", { class: "legend" }, ...OUTCOMES.filter((o) => used.has(o)).map((o) => el("span", {}, el("i", { class: o }), o)));
}

/** The lease history as a table: epoch, pod, held from/to, for how long, how it ended, the steps. */
export function leaseTable(leases) {
  const head = el("tr", {}, ...["Epoch", "Pod", "Granted", "Ended", "Held", "How it ended", "Steps"].map((h) => el("th", {}, h)));
  const rows = [...leases].reverse().map((lease) => el("tr", { dataset: { epoch: lease.epoch } },
    el("td", { class: "num" }, String(lease.epoch)),
    el("td", {}, show(lease.worker_id)),
    el("td", {}, when(lease.granted_at)),
    el("td", {}, lease.ended_at ? when(lease.ended_at) : "holding"),
    el("td", { class: "num" }, duration(ended(lease) - lease.granted_at)),
    el("td", {}, el("span", { class: `badge ${badgeClass(lease.outcome)}` }, lease.outcome),
      lease.fenced_at ? el("span", { class: "muted" }, ` (holder fenced off at ${when(lease.fenced_at)})`) : null),
    el("td", {}, steps(lease))));
  return el("table", { class: "lease-table" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

function badgeClass(outcome) {
  return { expired: "preempted", fenced: "failed" }[outcome] || outcome;
}
