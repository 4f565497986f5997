// The live log tail: every line with its time, pod, epoch and stream; follows the bottom while you are there.

import { el, when } from "./util.js";
import { lineOrigin } from "./adapt.js";

const KEEP = 5000;

export class LogTail {
  constructor() {
    this.box = el("div", { class: "logs", id: "log-tail", role: "log", "aria-live": "off" });
    this.empty = el("p", { class: "muted", id: "log-empty" }, "No log lines yet.");
    this.node = el("div", {}, this.box, this.empty);
    this.cursor = 0; // next_cursor of the last page shown
  }

  /** Append a page (LogsResponse); the pod and epoch of each line come from adapt.lineOrigin. */
  append(page) {
    const lines = page.lines;
    this.cursor = Math.max(this.cursor, page.next_cursor);
    if (!lines.length) return;
    const atBottom = this.box.scrollTop + this.box.clientHeight >= this.box.scrollHeight - 4;
    const fragment = document.createDocumentFragment();
    for (const line of lines) {
      const origin = lineOrigin(line);
      fragment.append(el("div", { class: `log-line ${line.stream}`, dataset: { epoch: origin.epoch ?? "", pod: origin.worker_id ?? "" } },
        el("span", { class: "ts" }, `${when(line.ts)} `),
        el("span", { class: "pod" }, `${origin.worker_id ?? "?"} `),
        el("span", { class: "epoch" }, `e${origin.epoch ?? "?"} `),
        el("span", { class: "stream" }, `${line.stream.padEnd(6)} `),
        el("span", { class: "text" }, line.line)));
    }
    this.box.append(fragment);
    while (this.box.childElementCount > KEEP) this.box.firstElementChild.remove();
    this.empty.classList.add("hidden");
    if (atBottom) this.box.scrollTop = this.box.scrollHeight;
  }
}
