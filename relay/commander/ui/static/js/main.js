// Entry point of every dashboard page: picks the page's module by <body data-page>.

import * as runs from "./runs.js";
import * as run from "./run.js";
import * as submit from "./submit.js";

const page = document.body.dataset.page;
const main = document.getElementById("main");
for (const link of document.querySelectorAll("header nav a")) {
  link.classList.toggle("current", link.dataset.nav === page);
}
if (page === "runs") runs.start(main);
else if (page === "run") run.start(main, document.body.dataset.runId);
else if (page === "submit") submit.start(main);
