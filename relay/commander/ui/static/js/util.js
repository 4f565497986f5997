// Small DOM and formatting helpers shared by every page (no framework: the pages are small).

const SVG_NS = "http://www.w3.org/2000/svg";

/** An HTML element: el("td", {class: "num"}, "42"). Attribute values are set, never parsed as HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** An SVG element, same calling convention as el(). */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

/** The commander's clock, as told by every stream message: ages are computed against it. */
export const clock = {
  offset: 0,
  sync(serverNow) {
    if (typeof serverNow === "number" && serverNow > 0) this.offset = Date.now() / 1000 - serverNow;
  },
  now() {
    return Date.now() / 1000 - this.offset;
  },
};

export const dash = "–";

export function show(value) {
  return value === null || value === undefined ? dash : String(value);
}

/** "4s", "3m05s", "2h01m", "3d04h". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return dash;
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, "0")}h`;
}

export function ago(ts) {
  return ts === null || ts === undefined ? dash : `${duration(clock.now() - ts)} ago`;
}

/** Local wall-clock time of a Unix timestamp: "14:03:07", with the date when it is not today. */
export function when(ts, withDate = false) {
  if (ts === null || ts === undefined) return dash;
  const d = new Date(ts * 1000);
  const time = d.toLocaleTimeString([], { hour12: false });
  if (!withDate && d.toDateString() === new Date().toDateString()) return time;
  return `${d.toISOString().slice(0, 10)} ${time}`;
}

export function bytes(n) {
  if (n === null || n === undefined || !isFinite(n)) return dash;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** A metric value with 4 significant digits (1.234e-5 for tiny learning rates). */
export function num(v) {
  if (v === null || v === undefined) return dash;
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6)) return v.toExponential(2);
  return Number(v.toPrecision(4)).toString();
}

/** key=value tokens of a worker event message ("step=50 path=/x bytes=123"), as an object. */
export function fields(message) {
  const out = {};
  for (const token of String(message || "").split(/\s+/)) {
    const eq = token.indexOf("=");
    if (eq > 0) out[token.slice(0, eq)] = token.slice(eq + 1);
  }
  return out;
}
