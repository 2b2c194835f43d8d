// Charts drawn as inline SVG with DOM calls: line charts over time (axes, units, legend,
// threshold lines), horizontal bars, stacked progress bars. No library, no inline style.

import { h, s } from "./dom.js";

export const PALETTE = ["#0f766e", "#2563eb", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#dc2626"];

/** Round step for about `count` ticks over [0, max]. */
function niceTicks(min, max, count = 4) {
  if (!(max > min)) max = min + 1;
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((x) => x >= raw) ?? raw;
  const ticks = [];
  for (let v = Math.floor(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(+v.toFixed(10));
  if (ticks[ticks.length - 1] < max) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

function fmt(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toFixed(0)}k`;
  if (a >= 100) return `${Math.round(v)}`;
  if (a >= 1) return `${+v.toFixed(2)}`;
  return `${+v.toFixed(3)}`;
}

function clock(t, span) {
  const opts = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
  if (span < 600) opts.second = "2-digit"; // under ten minutes: the seconds tell points apart
  return new Date(t * 1000).toLocaleTimeString(undefined, opts);
}

function figure(title, unit, svg, legend, note) {
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", {}, title, unit ? h("span", { class: "unit" }, ` (${unit})`) : null),
    svg,
    legend,
    note ? h("p", { class: "muted small chart-note" }, note) : null,
  );
}

/**
 * A line chart over time.
 * @param {object} o title, unit, series [{name, points: [[t, v], ...]}], thresholds
 *   [{value, label}], yMin (default 0), yMax (optional), note, width, height
 */
export function lineChart(o) {
  const W = o.width ?? 560, H = o.height ?? 220;
  const m = { l: 48, r: 16, t: 12, b: 28 };
  const series = o.series.filter((x) => x.points.some((p) => p[1] !== null && p[1] !== undefined));
  const all = series.flatMap((x) => x.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": o.title });
  if (!all.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, class: "chart-empty", "text-anchor": "middle" }, o.empty ?? "No data yet"));
    return figure(o.title, o.unit, svg, null, o.note);
  }
  const ts = all.map((p) => p[0]);
  let t0 = o.tMin ?? Math.min(...ts), t1 = o.tMax ?? Math.max(...ts);
  if (t1 <= t0) { t0 -= 30; t1 += 30; }
  const thresholds = o.thresholds ?? [];
  const vmax = Math.max(...all.map((p) => p[1]), ...thresholds.map((x) => x.value), o.yMax ?? 0);
  const yt = niceTicks(o.yMin ?? 0, vmax);
  const y0 = yt[0], y1 = yt[yt.length - 1];
  const X = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
  const Y = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);
  for (const v of yt) {
    svg.append(s("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), class: "grid" }));
    svg.append(s("text", { x: m.l - 6, y: Y(v) + 4, class: "tick", "text-anchor": "end" }, fmt(v)));
  }
  const xticks = 4;
  for (let i = 0; i <= xticks; i++) {
    const t = t0 + ((t1 - t0) * i) / xticks;
    svg.append(s("text", { x: X(t), y: H - 8, class: "tick", "text-anchor": i === 0 ? "start" : i === xticks ? "end" : "middle" }, clock(t, t1 - t0)));
  }
  svg.append(s("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis" }));
  svg.append(s("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, class: "axis" }));
  for (const th of thresholds) {
    svg.append(s("line", { x1: m.l, x2: W - m.r, y1: Y(th.value), y2: Y(th.value), class: "threshold" }));
    svg.append(s("text", { x: W - m.r - 4, y: Y(th.value) - 4, class: "threshold-label", "text-anchor": "end" }, th.label));
  }
  series.forEach((x, i) => {
    const colour = x.colour ?? PALETTE[i % PALETTE.length];
    const pts = x.points.filter((p) => p[1] !== null && p[1] !== undefined);
    const d = pts.map((p, j) => `${j ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    svg.append(s("path", { d, class: "line", stroke: colour }));
    if (pts.length <= 40) for (const p of pts) svg.append(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: colour }, s("title", {}, `${x.name}: ${fmt(p[1])}`)));
  });
  const legend = h(
    "div",
    { class: "legend" },
    series.map((x, i) => h("span", { class: "legend-item" }, swatch(x.colour ?? PALETTE[i % PALETTE.length]), x.name)),
  );
  return figure(o.title, o.unit, svg, series.length > 1 || o.legend ? legend : null, o.note);
}

function swatch(colour) {
  return s("svg", { class: "swatch", viewBox: "0 0 10 10", width: 10, height: 10 }, s("rect", { width: 10, height: 10, rx: 2, fill: colour }));
}

/**
 * Horizontal bars with their values.
 * @param {object} o title, unit, bars [{label, value, colour?, text?}], max, marker {value, label}
 */
export function barChart(o) {
  const rowH = 26, W = o.width ?? 460, labelW = o.labelWidth ?? 130, valueW = 70;
  const H = Math.max(1, o.bars.length) * rowH + 8;
  const max = Math.max(o.max ?? 0, ...o.bars.map((b) => b.value), o.marker?.value ?? 0) || 1;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": o.title });
  const X = (v) => labelW + (v / max) * (W - labelW - valueW);
  o.bars.forEach((b, i) => {
    const y = 4 + i * rowH;
    svg.append(s("text", { x: labelW - 8, y: y + 16, class: "bar-label", "text-anchor": "end" }, b.label));
    svg.append(s("rect", { x: labelW, y: y + 4, width: W - labelW - valueW, height: 16, rx: 3, class: "bar-track" }));
    svg.append(s("rect", { x: labelW, y: y + 4, width: Math.max(0, X(b.value) - labelW), height: 16, rx: 3, fill: b.colour ?? PALETTE[0] }));
    svg.append(s("text", { x: W - valueW + 8, y: y + 16, class: "bar-value" }, b.text ?? fmt(b.value)));
  });
  if (o.marker) {
    const x = X(o.marker.value);
    svg.append(s("line", { x1: x, x2: x, y1: 0, y2: H, class: "threshold" }));
  }
  const note = o.marker ? `dashed line: ${o.marker.label}` : o.note;
  return figure(o.title, o.unit, svg, null, note);
}

/**
 * One stacked bar of parts of a whole, with a legend of counts.
 * @param {Array} parts [{label, value, colour}], total
 */
export function stackBar(parts, total, { label } = {}) {
  const W = 560, H = 18;
  const sum = total || parts.reduce((a, p) => a + p.value, 0) || 1;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "stack-svg", role: "img", "aria-label": label ?? "progress", preserveAspectRatio: "none" });
  svg.append(s("rect", { x: 0, y: 0, width: W, height: H, rx: 4, class: "bar-track" }));
  let x = 0;
  for (const p of parts) {
    if (!p.value) continue;
    const w = (p.value / sum) * W;
    svg.append(s("rect", { x, y: 0, width: w, height: H, fill: p.colour }, s("title", {}, `${p.label}: ${p.value}`)));
    x += w;
  }
  const legend = h(
    "div",
    { class: "legend" },
    parts.filter((p) => p.value).map((p) => h("span", { class: "legend-item" }, swatch(p.colour), `${p.label} ${p.value}`)),
  );
  return h("div", { class: "stack" }, svg, legend);
}

/** The colour of a device's or a rollout's state. */
export const STATE_COLOURS = {
  healthy: "#16a34a", online: "#16a34a", completed: "#16a34a",
  pending: "#cbd5e1", queued: "#cbd5e1", sent: "#93c5fd", downloading: "#60a5fa",
  received: "#93c5fd", verified: "#3b82f6", staged: "#2563eb", activated: "#1d4ed8",
  probation: "#0891b2", running: "#2563eb", paused: "#d97706",
  failed: "#dc2626", refused: "#dc2626", halted: "#dc2626", aborted: "#9f1239",
  rolled_back: "#f97316", timed_out: "#f59e0b", offline: "#64748b", unknown: "#94a3b8",
  skipped: "#a8a29e",
};
export const colourOf = (state) => STATE_COLOURS[state] ?? "#94a3b8";
