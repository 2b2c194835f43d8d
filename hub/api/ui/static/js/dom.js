// Building the page with DOM calls only: text goes in as text nodes (textContent), never
// as HTML, so nothing a device or an operator sent can become markup or script.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "on") {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (name === "style") {
      for (const [prop, v] of Object.entries(value)) el.style.setProperty(prop, v);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("td", {class: "num"}, "42"). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element: s("line", {x1: 0, y1: 0, x2: 10, y2: 0}). */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** A card: a titled panel. */
export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...children);
}

/** A table from column headers and rows of cells (strings, numbers or nodes). */
export function table(headers, rows, { empty = "Nothing yet.", numeric = [] } = {}) {
  if (!rows.length) return h("p", { class: "muted empty" }, empty);
  const cls = (i) => (numeric.includes(i) ? "num" : null);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, headers.map((x, i) => h("th", { class: cls(i) }, x)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, row.map((x, i) => h("td", { class: cls(i) }, x))))),
    ),
  );
}

/** A coloured state badge: badge("online"). */
export function badge(state, text) {
  const safe = String(state || "unknown").replace(/[^a-z_]/gi, "");
  return h("span", { class: `badge state-${safe}` }, text ?? String(state ?? "unknown"));
}

/** A big number with a caption. */
export function stat(label, value, tone) {
  return h(
    "div",
    { class: `stat ${tone ? "tone-" + tone : ""}` },
    h("div", { class: "stat-value" }, String(value)),
    h("div", { class: "stat-label" }, label),
  );
}

export function link(href, text) {
  return h("a", { href }, text);
}

/** Seconds since the epoch as a local time ("14:05:09"), with the day when not today. */
export function when(ts) {
  if (ts === null || ts === undefined) return "—";
  const d = new Date(ts * 1000);
  const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  if (d.toDateString() === new Date().toDateString()) return time;
  return `${d.toLocaleDateString(undefined, { month: "short", day: "numeric" })} ${time}`;
}

/** Seconds since the epoch as "12 s ago". */
export function ago(ts) {
  if (ts === null || ts === undefined) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function pct(x, digits = 1) {
  return x === null || x === undefined ? "—" : `${(x * 100).toFixed(digits)} %`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function short(sha) {
  return sha ? String(sha).slice(0, 12) : "—";
}
