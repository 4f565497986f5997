// The dashboard's calls: one EventSource per tab for everything live, and fetch() for the two actions.
// State-changing calls carry the page's CSRF token; a 401 anywhere sends the tab to the login page.

const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content || "";

export function toLogin() {
  const next = location.pathname + location.search;
  location.assign(`/ui/login?next=${encodeURIComponent(next)}`);
}

/** POST to a dashboard action; resolves to {status, body} (body parsed as JSON when it is JSON). */
export async function post(url, body = null, contentType = "text/plain") {
  const headers = { "X-CSRF-Token": csrfToken };
  if (body !== null) headers["Content-Type"] = contentType;
  const resp = await fetch(url, { method: "POST", headers, body, credentials: "same-origin" });
  if (resp.status === 401) toLogin();
  let parsed = null;
  try {
    parsed = await resp.json();
  } catch {
    parsed = { error: `${resp.status} ${resp.statusText}` };
  }
  return { status: resp.status, body: parsed };
}

/**
 * Open the tab's one live connection. handlers: {runs, run, logs, gone}, each given the parsed message.
 * The browser reconnects by itself after a network error (sending the last log cursor as Last-Event-ID);
 * a refused stream goes to login when the session is gone, else is opened again from resumeAfter().
 */
export function openStream(runId, handlers, resumeAfter = () => 0) {
  const query = new URLSearchParams();
  if (runId) query.set("run", runId);
  if (resumeAfter() > 0) query.set("after", String(resumeAfter())); // the log lines the page already shows
  const source = new EventSource(`/ui/api/stream${query.size ? `?${query}` : ""}`);
  const live = document.getElementById("live");
  const state = (name, text) => {
    if (live) {
      live.dataset.state = name;
      live.textContent = text;
    }
  };
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => {
      state("live", "live");
      handler(JSON.parse(event.data));
    });
  }
  source.onopen = () => state("live", "live");
  source.onerror = async () => {
    state("down", source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…");
    if (source.readyState === EventSource.CLOSED) {
      const resp = await fetch("/ui/api/session", { credentials: "same-origin" }).catch(() => null);
      if (resp && resp.status === 401) toLogin();
      else setTimeout(() => openStream(runId, handlers, resumeAfter), 3000);
    }
  };
  window.relayStream = source; // tests and the curious can see the one connection
  return source;
}
