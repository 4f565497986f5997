// The run page's tables: checkpoints (local and remote, with sizes and sync state) and events.

import { bytes, el, fields, show, when } from "./util.js";

const CHECKPOINT_EVENTS = new Set(["checkpoint_committed", "checkpoint_synced", "sync_failed"]);

/** Checkpoints by step, from the workers' checkpoint events: committed (size), synced (revision), failures. */
export function checkpointRows(events) {
  const bySteps = new Map();
  const get = (step) => {
    if (!bySteps.has(step)) bySteps.set(step, { step, committed: null, synced: null, failures: [] });
    return bySteps.get(step);
  };
  for (const ev of events) {
    if (!CHECKPOINT_EVENTS.has(ev.name)) continue;
    const f = fields(ev.message);
    const step = f.step === undefined || f.step === "None" ? null : Number(f.step);
    if (step === null || Number.isNaN(step)) continue;
    const row = get(step);
    if (ev.name === "checkpoint_committed") row.committed = { ts: ev.ts, worker: ev.worker_id, epoch: ev.epoch, bytes: num(f.bytes), path: f.path };
    else if (ev.name === "checkpoint_synced") row.synced = { ts: ev.ts, revision: f.revision, sent: num(f.bytes_sent) };
    else row.failures.push(ev);
  }
  return [...bySteps.values()].sort((a, b) => b.step - a.step);
}

function num(value) {
  const n = Number(value);
  return value === undefined || value === "None" || Number.isNaN(n) ? null : n;
}

function syncState(row, run) {
  if (row.synced) return `synced${row.synced.revision && row.synced.revision !== "None" ? ` (revision ${row.synced.revision})` : ""}`;
  if (row.failures.length) return `sync failed: ${row.failures[row.failures.length - 1].message || ""}`;
  if (run.remote_step !== null && run.remote_step !== undefined && run.remote_step >= row.step) return "on the remote";
  return run.spec && !run.spec.remote ? "local only (no remote)" : "not synced yet";
}

/** The checkpoints panel body: the latest checkpoint and the final export, then one row per step. */
export function checkpointsPanel(run, events) {
  const ckpt = run.latest_checkpoint;
  const lag = ckpt && run.remote_step !== null && run.remote_step !== undefined ? Math.max(0, ckpt.step - run.remote_step) : null;
  const summary = el("p", { id: "ckpt-summary" },
    ckpt ? `Latest: step ${ckpt.step} at ` : "No checkpoint yet.",
    ckpt ? el("code", {}, ckpt.path) : null,
    ckpt && ckpt.remote_revision ? ` (remote revision ${ckpt.remote_revision})` : "",
    ` · remote step ${show(run.remote_step)}`,
    lag !== null ? ` · sync lag ${lag} step${lag === 1 ? "" : "s"}` : "");
  const parts = [summary];
  if (run.status === "completed") {
    const synced = ckpt && run.remote_step !== null && run.remote_step >= ckpt.step;
    parts.push(el("p", { id: "final-export", class: synced ? "" : "lag-warn" },
      ckpt ? `Final export: step ${ckpt.step}, ${synced ? "synced to the remote" : "on the last pod's volume only (not synced)"}.`
        : "Final export: none reported.", run.detail ? ` ${run.detail}` : ""));
  }
  const rows = checkpointRows(events);
  if (!rows.length) return el("div", {}, ...parts);
  const head = el("tr", {}, ...["Step", "Committed", "Pod", "Size", "Remote", "Sent"].map((h) => el("th", {}, h)));
  const body = rows.map((row) => el("tr", { dataset: { step: row.step } },
    el("td", { class: "num" }, String(row.step)),
    el("td", {}, row.committed ? when(row.committed.ts) : "–"),
    el("td", {}, row.committed ? `${show(row.committed.worker)} (e${row.committed.epoch})` : "–"),
    el("td", { class: "num" }, row.committed ? bytes(row.committed.bytes) : "–"),
    el("td", { class: row.synced ? "" : "muted" }, syncState(row, run)),
    el("td", { class: "num" }, row.synced ? bytes(row.synced.sent) : "–")));
  parts.push(el("div", { class: "scroll" }, el("table", { id: "ckpt-table" }, el("thead", {}, head), el("tbody", {}, ...body))));
  return el("div", {}, ...parts);
}

/** Events, newest first. */
export function eventsTable(events) {
  const head = el("tr", {}, ...["Time", "Epoch", "Pod", "Event", "Message"].map((h) => el("th", {}, h)));
  const rows = [...events].reverse().map((ev) => el("tr", { dataset: { event: ev.name } },
    el("td", {}, when(ev.ts)), el("td", { class: "num" }, String(ev.epoch)), el("td", {}, show(ev.worker_id)),
    el("td", {}, ev.name), el("td", { class: "msg" }, ev.message || "")));
  return el("div", { class: "scroll" }, el("table", { id: "events-table" }, el("thead", {}, head), el("tbody", {}, ...rows)));
}
