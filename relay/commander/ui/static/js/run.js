// The run page: what the run is doing now, who carried it (lease timeline), its curves, checkpoints,
// events and live logs, and a cancel button that asks first. Everything arrives on the tab's one stream.

import { ago, clock, dash, el, show, when } from "./util.js";
import { openStream, post } from "./api.js";
import { leaseHistory } from "./adapt.js";
import { drawCharts } from "./chart.js";
import { drawTimeline, leaseTable, legend } from "./timeline.js";
import { checkpointsPanel, eventsTable } from "./panels.js";
import { LogTail } from "./logs.js";
import { syncLag } from "./runs.js";

const CLOSED = new Set(["completed", "cancelled"]);

function panel(title, id, note = "") {
  const body = el("div", { id: `${id}-body` });
  return { node: el("section", { class: "panel", id }, el("h2", {}, title, note ? el("span", { class: "muted" }, note) : null), body), body };
}

class RunPage {
  constructor(main, runId) {
    this.runId = runId;
    this.detail = null;
    this.flash = el("div", { class: "flash hidden", id: "flash", role: "status" });
    this.head = el("section", { class: "panel", id: "run-head" });
    this.timeline = panel("Lease timeline", "timeline", "one bar per epoch, one lane per pod");
    this.charts = panel("Metrics", "metrics", "from every pod; dashed lines mark handoffs");
    this.checkpoints = panel("Checkpoints", "checkpoints");
    this.events = panel("Events", "events");
    this.logs = new LogTail();
    const logPanel = panel("Logs", "logs", "live; pod and epoch on every line");
    logPanel.body.append(this.logs.node);
    this.dialog = this.cancelDialog();
    main.replaceChildren(this.flash, this.head, this.timeline.node, this.charts.node,
      el("div", { class: "grid2" }, this.checkpoints.node, this.events.node), logPanel.node, this.dialog);
  }

  cancelDialog() {
    const confirm = el("button", { type: "button", class: "danger", id: "confirm-cancel" }, "Cancel the run");
    const keep = el("button", { type: "button", id: "keep-run" }, "Keep it");
    const dialog = el("dialog", { id: "cancel-dialog" },
      el("h3", {}, `Cancel run ${this.runId}?`),
      el("p", {}, "A waiting run is cancelled at once. A running one stops at its holder's next renew: the trainer saves its step, the checkpoint stays on the pod's volume, and the run is never handed out again."),
      el("div", { class: "buttons" }, keep, confirm));
    keep.addEventListener("click", () => dialog.close());
    confirm.addEventListener("click", async () => {
      dialog.close();
      const { status, body } = await post(`/ui/api/runs/${encodeURIComponent(this.runId)}/cancel`);
      if (status === 200) {
        this.say(body.status === "cancelled" ? `Run ${this.runId} cancelled.`
          : `Cancel requested: ${body.holder || "the holder"} stops at its next renew.`);
      } else this.say(`Cancel refused: ${body.error || status}`, true);
    });
    return dialog;
  }

  say(text, bad = false) {
    this.flash.textContent = text;
    this.flash.classList.toggle("bad", bad);
    this.flash.classList.remove("hidden");
  }

  /** A ``run`` message: the whole detail (reset) or the new events and metrics points to append. */
  update(message) {
    const next = message.detail;
    if (message.reset || !this.detail) this.detail = next;
    else {
      next.events = [...this.detail.events, ...next.events];
      next.metrics_history = [...this.detail.metrics_history, ...next.metrics_history];
      this.detail = next;
    }
    this.leases = leaseHistory(this.detail);
    this.render();
  }

  render() {
    const run = this.detail;
    document.title = `relay · ${run.run_id} (${run.status})`;
    this.drawHead(run);
    if (this.leases.length) {
      this.timeline.body.replaceChildren(drawTimeline(this.leases), legend(this.leases), leaseTable(this.leases));
    } else this.timeline.body.replaceChildren(el("p", { class: "empty" }, "No pod has held this run yet."));
    const charts = drawCharts(run.metrics_history, this.leases);
    this.charts.body.replaceChildren(charts.length ? el("div", { class: "charts" }, ...charts)
      : el("p", { class: "empty" }, "No metrics reported yet."));
    this.checkpoints.body.replaceChildren(checkpointsPanel(run, run.events));
    this.events.body.replaceChildren(run.events.length ? eventsTable(run.events) : el("p", { class: "empty" }, "No events."));
  }

  /** The header is built once and then only its texts change: a click never lands on a replaced button. */
  buildHead() {
    this.cancelButton = el("button", { type: "button", class: "danger", id: "cancel-run", disabled: true }, "Cancel run");
    this.cancelButton.addEventListener("click", () => this.dialog.showModal());
    this.facts = {};
    const fact = (label, id) => el("div", {}, el("span", {}, label), (this.facts[id] = el("b", { id: `fact-${id}` }, dash)));
    this.title = el("h1", { id: "run-title" }, this.runId);
    this.badge = el("span", { class: "badge", id: "run-status" });
    this.subtitle = el("span", { class: "muted" });
    this.detailLine = el("p", { class: "detail-line hidden", id: "run-detail" });
    this.head.replaceChildren(
      el("div", { class: "run-head" }, this.title, this.badge, this.subtitle, el("div", { class: "actions" }, this.cancelButton)),
      el("div", { class: "facts" }, fact("Epoch", "epoch"), fact("Holder", "holder"), fact("Step", "step"),
        fact("Checkpoint", "checkpoint"), fact("Remote step", "remote"), fact("Sync lag", "lag"),
        fact("Restarts", "restarts"), fact("Last renew", "renewed"), fact("Created", "created")),
      this.detailLine);
  }

  drawHead(run) {
    if (!this.facts) this.buildHead();
    this.badge.className = `badge ${run.status}`;
    this.badge.textContent = run.status;
    this.subtitle.textContent = run.mode ? `${run.mode} · priority ${run.priority}` : "";
    const closed = CLOSED.has(run.status);
    this.cancelButton.disabled = closed || run.cancel_requested;
    this.cancelButton.textContent = run.cancel_requested && !closed ? "Cancelling…" : "Cancel run";
    const restarts = run.max_restarts === null || run.max_restarts === undefined ? String(run.restarts) : `${run.restarts} of ${run.max_restarts}`;
    const values = {
      epoch: String(run.epoch), holder: show(run.holder), step: show(run.step),
      checkpoint: show(run.latest_checkpoint ? run.latest_checkpoint.step : null), remote: show(run.remote_step),
      lag: show(syncLag(run)), restarts, renewed: run.holder ? ago(run.last_renew_at) : dash, created: when(run.created_at, true),
    };
    for (const [id, value] of Object.entries(values)) this.facts[id].textContent = value;
    this.detailLine.textContent = run.detail || "";
    this.detailLine.classList.toggle("hidden", !run.detail);
  }

  tick() {
    if (this.detail?.holder) this.facts.renewed.textContent = ago(this.detail.last_renew_at);
  }
}

export function start(main, runId) {
  const page = new RunPage(main, runId);
  const source = openStream(runId, {
    run(message) {
      clock.sync(message.now);
      page.update(message);
    },
    logs(message) {
      page.logs.append(message);
    },
    gone() {
      source.close(); // nothing more will come: do not reconnect
      main.replaceChildren(el("p", { class: "empty", id: "run-gone" }, `There is no run ${runId}. `, el("a", { href: "/ui/" }, "All runs")));
    },
  }, () => page.logs.cursor);
  setInterval(() => page.tick(), 1000);
}
