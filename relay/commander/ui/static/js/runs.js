// The runs page: one row per run, kept up to date from the stream without reloading.
//
// Rows are keyed by run id; a change rewrites only the cells of the runs that changed, and the status
// filter is a CSS rule on the rows' container (no row is rebuilt to filter). The rows are a CSS grid with
// content-visibility: auto, so the browser lays out and paints only the rows on screen: 1,000 runs cost
// about what 40 do. The first full render is timed into window.relayPerf (the browser test prints it).

import { clock, el, ago, dash, show } from "./util.js";
import { openStream } from "./api.js";

const STATUSES = ["pending", "running", "preempted", "completed", "failed", "cancelled"];
const COLUMNS = [
  ["run", "Run"], ["status", "Status"], ["mode", "Mode"], ["epoch", "Epoch", "num"], ["holder", "Holder"],
  ["step", "Step", "num"], ["checkpoint", "Checkpoint", "num"], ["remote", "Remote step", "num"],
  ["lag", "Sync lag", "num"], ["restarts", "Restarts", "num"], ["renewed", "Last renew"],
];

export function syncLag(run) {
  const ckpt = run.latest_checkpoint ? run.latest_checkpoint.step : null;
  if (ckpt === null || run.remote_step === null || run.remote_step === undefined) return null;
  return Math.max(0, ckpt - run.remote_step);
}

function cells(run) {
  const lag = syncLag(run);
  const restarts = run.max_restarts === null || run.max_restarts === undefined
    ? String(run.restarts) : `${run.restarts} / ${run.max_restarts}`;
  const status = run.status + (run.cancel_requested && run.status === "running" ? " (cancelling)" : "");
  return {
    run: el("a", { href: `/ui/runs/${encodeURIComponent(run.run_id)}` }, run.run_id),
    status: el("span", { class: `badge ${run.status}` }, status),
    mode: show(run.mode),
    epoch: String(run.epoch),
    holder: show(run.holder),
    step: show(run.step),
    checkpoint: show(run.latest_checkpoint ? run.latest_checkpoint.step : null),
    remote: show(run.remote_step),
    lag: lag === null ? dash : String(lag),
    restarts,
    renewed: run.holder ? ago(run.last_renew_at) : dash,
  };
}

class RunsTable {
  constructor(root) {
    this.rows = new Map(); // run_id -> {tr, run, tds}
    this.filter = new URLSearchParams(location.search).get("status") || "all";
    this.counts = el("div", { class: "filters", role: "group", "aria-label": "filter by status" });
    this.total = el("span", { class: "muted", id: "runs-count" });
    this.tbody = el("div", { id: "runs-body", role: "rowgroup", dataset: { filter: this.filter } });
    const head = el("div", { class: "run-row head", role: "row" },
      ...COLUMNS.map(([, label, cls]) => el("div", { class: cls ? `cell ${cls}` : "cell", role: "columnheader" }, label)));
    this.empty = el("p", { class: "empty hidden", id: "runs-empty" }, "No runs yet. ",
      el("a", { href: "/ui/submit" }, "Submit one"), ", or start a worker with a RUN_ID.");
    root.replaceChildren(
      el("section", { class: "panel" },
        el("div", { class: "toolbar" }, this.counts, this.total),
        el("div", { class: "runs-grid", id: "runs-table", role: "table", "aria-label": "runs" }, head, this.tbody),
        this.empty),
    );
    this.drawFilters();
  }

  drawFilters() {
    const count = { all: this.rows.size };
    for (const { run } of this.rows.values()) count[run.status] = (count[run.status] || 0) + 1;
    this.counts.replaceChildren(...["all", ...STATUSES].map((status) => {
      const button = el("button", { type: "button", dataset: { status }, "aria-pressed": String(status === this.filter) },
        status, el("span", { class: "n" }, String(count[status] || 0)));
      button.addEventListener("click", () => this.setFilter(status));
      return button;
    }));
    const shown = this.filter === "all" ? this.rows.size : count[this.filter] || 0;
    this.total.textContent = `${shown} shown of ${this.rows.size}`;
    this.empty.classList.toggle("hidden", this.rows.size > 0);
  }

  setFilter(status) {
    this.filter = status;
    this.tbody.dataset.filter = status;
    const url = new URL(location.href);
    if (status === "all") url.searchParams.delete("status");
    else url.searchParams.set("status", status);
    history.replaceState(null, "", url);
    this.drawFilters();
  }

  row(run) {
    const tds = {};
    const tr = el("div", { class: "run-row", role: "row", dataset: { runId: run.run_id, status: run.status } },
      ...COLUMNS.map(([key, , cls]) => (tds[key] = el("div", { class: `cell col-${key}${cls ? ` ${cls}` : ""}`, role: "cell" }))));
    const entry = { tr, run, tds };
    this.fill(entry, run);
    return entry;
  }

  fill(entry, run) {
    entry.run = run;
    entry.tr.dataset.status = run.status;
    const values = cells(run);
    for (const [key, td] of Object.entries(entry.tds)) {
      const value = values[key];
      const signature = typeof value === "string" ? value : value.outerHTML;
      if (td.relaySignature === signature) continue; // unchanged: leave the node (and a click on it) alone
      td.replaceChildren(value);
      td.relaySignature = signature;
    }
    const lag = syncLag(run);
    entry.tds.lag.classList.toggle("lag-warn", lag !== null && lag > 0);
  }

  /** A full snapshot (first message, or after a reconnect): rebuild every row at once. */
  replace(runs) {
    const started = performance.now();
    this.rows.clear();
    const fragment = document.createDocumentFragment();
    for (const run of sortRuns(runs)) {
      const entry = this.row(run);
      this.rows.set(run.run_id, entry);
      fragment.append(entry.tr);
    }
    this.tbody.replaceChildren(fragment);
    this.drawFilters();
    const built = performance.now();
    void this.tbody.offsetHeight; // style and layout now, so the figure below says what they cost
    const laidOut = performance.now();
    requestAnimationFrame(() => setTimeout(() => {
      window.relayPerf = {
        rows: runs.length,
        buildMs: built - started,
        layoutMs: laidOut - built,
        paintedMs: performance.now() - started,
        sinceNavigationMs: performance.now(),
      };
    }, 0));
  }

  /** Changed and removed runs: touch only their rows; new runs go where the order puts them. */
  update(runs, removed) {
    let added = false;
    for (const run of runs) {
      const entry = this.rows.get(run.run_id);
      if (entry) this.fill(entry, run);
      else {
        this.rows.set(run.run_id, this.row(run));
        added = true;
      }
    }
    for (const id of removed) {
      this.rows.get(id)?.tr.remove();
      this.rows.delete(id);
    }
    if (added) {
      const order = sortRuns([...this.rows.values()].map((e) => e.run));
      this.tbody.append(...order.map((run) => this.rows.get(run.run_id).tr));
    }
    this.drawFilters();
  }

  /** Renew ages move every second; only the rows of held runs have one. */
  tick() {
    for (const { run, tds } of this.rows.values()) {
      if (run.holder) tds.renewed.textContent = ago(run.last_renew_at);
    }
  }
}

/** Newest first: the run you just submitted or started is at the top. */
function sortRuns(runs) {
  return [...runs].sort((a, b) => b.created_at - a.created_at || (a.run_id < b.run_id ? -1 : 1));
}

export function start(main) {
  const table = new RunsTable(main);
  openStream(null, {
    runs(message) {
      clock.sync(message.now);
      if (message.full) table.replace(message.runs);
      else table.update(message.runs, message.removed);
    },
  });
  setInterval(() => table.tick(), 1000);
}
