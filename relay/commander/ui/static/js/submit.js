// The submit page: a run spec as YAML, checked by the commander exactly as `relayctl submit` checks a file,
// every problem listed; on success, a link to the new run.

import { el } from "./util.js";
import { post } from "./api.js";

const EXAMPLE = `# A run spec, as in configs/job.yaml (keys: run_id, mode, train, remote, max_restarts,
# priority, max_duration_s, callbacks). Pods started without RUN_ID pick it up.
run_id: sft-demo-002
mode: sft
priority: 5
max_restarts: 3
# remote: hf://my-org/relay-checkpoints
train:
  model: Qwen/Qwen2.5-0.5B-Instruct
  dataset: /data/train.jsonl
  max_steps: 200
  save_steps: 50
  learning_rate: 2.0e-5
`;

export function start(main) {
  const text = el("textarea", { id: "spec", spellcheck: "false", "aria-label": "run spec (YAML)" });
  text.value = EXAMPLE;
  const own = el("input", { type: "checkbox", id: "own-trainer" });
  const button = el("button", { type: "button", class: "primary", id: "submit-spec" }, "Submit");
  const errors = el("ul", { class: "errors", id: "spec-errors" });
  const result = el("div", { class: "flash hidden", id: "submit-result", role: "status" });
  main.replaceChildren(el("section", { class: "panel" },
    el("h2", {}, "Submit a run", el("span", { class: "muted" }, "checked like `relayctl submit`: every problem is listed")),
    result, text,
    el("p", {}, el("label", {}, own, " My own trainer (SLIME_SFT_CMD / SLIME_RL_CMD): do not check the train: keys")),
    el("p", {}, button), errors));

  button.addEventListener("click", async () => {
    button.disabled = true;
    errors.replaceChildren();
    result.classList.add("hidden");
    const url = `/ui/api/submit${own.checked ? "?validate_train=0" : ""}`;
    try {
      const { status, body } = await post(url, text.value, "application/yaml");
      if (status === 200 || status === 201) {
        const link = el("a", { href: `/ui/runs/${encodeURIComponent(body.run_id)}`, id: "submitted-link" }, body.run_id);
        result.replaceChildren(status === 201 ? "Submitted run " : "Already submitted with this spec: run ", link, ` (${body.status}).`);
        result.classList.remove("hidden", "bad");
      } else {
        const problems = body.problems && body.problems.length ? body.problems : [body.error || `refused (${status})`];
        errors.replaceChildren(...problems.map((p) => el("li", {}, p)));
        result.textContent = problems.length === 1 ? "The spec was not submitted:" : `The spec was not submitted: ${problems.length} problems.`;
        result.classList.remove("hidden");
        result.classList.add("bad");
      }
    } finally {
      button.disabled = false;
    }
  });
}
