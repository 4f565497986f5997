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
    this.logs.leases = this.leases;
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

  drawHead(run) {
    const cancel = el("button", { type: "button", class: "danger", id: "cancel-run", disabled: CLOSED.has(run.status) || run.cancel_requested },
      run.cancel_requested && !CLOSED.has(run.status) ? "Cancelling…" : "Cancel run");
    cancel.addEventListener("click", () => this.dialog.showModal());
    const fact = (label, value, id) => el("div", {}, el("span", {}, label), el("b", { id }, value));
    const lag = syncLag(run);
    const restarts = run.max_restarts === null || run.max_restarts === undefined ? String(run.restarts) : `${run.restarts} of ${run.max_restarts}`;
    this.renewed = fact("Last renew", run.holder ? ago(run.last_renew_at) : dash, "fact-renewed");
    this.head.replaceChildren(
      el("div", { class: "run-head" }, el("h1", { id: "run-title" }, run.run_id),
        el("span", { class: `badge ${run.status}`, id: "run-status" }, run.status),
        el("span", { class: "muted" }, run.mode ? `${run.mode} · priority ${run.priority}` : ""),
        el("div", { class: "actions" }, cancel)),
      el("div", { class: "facts" },
        fact("Epoch", String(run.epoch), "fact-epoch"), fact("Holder", show(run.holder), "fact-holder"),
        fact("Step", show(run.step), "fact-step"),
        fact("Checkpoint", show(run.latest_checkpoint ? run.latest_checkpoint.step : null), "fact-checkpoint"),
        fact("Remote step", show(run.remote_step), "fact-remote"), fact("Sync lag", show(lag), "fact-lag"),
        fact("Restarts", restarts, "fact-restarts"), this.renewed,
        fact("Created", when(run.created_at, true), "fact-created")),
      run.detail ? el("p", { class: "detail-line" }, run.detail) : "");
  }

  tick() {
    if (this.detail?.holder) this.renewed.querySelector("b").textContent = ago(this.detail.last_renew_at);
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
      page.logs.append(message.lines);
    },
    gone() {
      source.close(); // nothing more will come: do not reconnect
      main.replaceChildren(el("p", { class: "empty", id: "run-gone" }, `There is no run ${runId}. `, el("a", { href: "/ui/" }, "All runs")));
    },
  });
  setInterval(() => page.tick(), 1000);
}
