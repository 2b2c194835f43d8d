// Models: every version with its metrics, its size fp32 against int8, the gates it passed
// and its lineage (data, run, configuration).

import { get } from "../api.js";
import { barChart } from "../charts.js";
import { badge, bytes, card, h, pct, short, table, when } from "../dom.js";

const LINEAGE_SHOWN = 8; // newest versions whose gates and lineage are fetched
let chosen = null; // "name/version" whose lineage is open

const key = (m) => `${m.name}/${m.version}`;

function gates(lineage) {
  const list = lineage?.training?.gates ?? [];
  if (!lineage) return h("span", { class: "muted" }, "—");
  if (!list.length) return h("span", { class: "muted" }, lineage.evaluated ? "no gate" : "not evaluated");
  return h("span", {}, list.map((g) => badge(g.passed ? "healthy" : "failed", `${g.passed ? "✓" : "✗"} ${g.name}`)));
}

function lineagePanel(m, lineage, refresh) {
  const t = lineage?.training ?? {};
  const split = t.split ?? {};
  const metrics = t.metrics ?? {};
  const row = (label, f) => [label, f(metrics.fp32), f(metrics.int8)];
  return card(`Lineage of ${m.name} v${m.version}`,
    h("div", { class: "grid-2" },
      h("dl", { class: "facts" },
        h("dt", {}, "source"), h("dd", {}, lineage?.source ?? m.source ?? "—"),
        h("dt", {}, "data"), h("dd", {}, (lineage?.datasets ?? []).map((d) => d.id).join(", ") || m.dataset || "—"),
        h("dt", {}, "split"), h("dd", {}, split.train_rows ? `${split.train_rows} train / ${split.holdout_rows} hold-out rows, seed ${split.seed}` : "—"),
        h("dt", {}, "training run"), h("dd", {}, t.run ? h("code", {}, t.run) : "—"),
        h("dt", {}, "architecture"), h("dd", {}, t.config ? `${t.config.kind} ${JSON.stringify(t.config.hidden ?? [])}` : "—"),
        h("dt", {}, "package"), h("dd", {}, t.package_version ?? "—"),
        h("dt", {}, "sha-256"), h("dd", {}, h("code", {}, short(m.sha256)))),
      h("div", {},
        table(["Hold-out", "fp32", "int8"], [
          row("accuracy", (x) => pct(x?.accuracy, 2)),
          row("macro F1", (x) => (x?.macro_f1 === undefined ? "—" : x.macro_f1.toFixed(3))),
          row("size", (x) => bytes(x?.size_bytes)),
          row("latency per row", (x) => (x?.latency_us_per_row === undefined ? "—" : `${x.latency_us_per_row.toFixed(1)} µs`)),
        ], { numeric: [1, 2] }),
        (t.gates ?? []).map((g) => h("p", { class: "gate" }, badge(g.passed ? "healthy" : "failed", g.passed ? "passed" : "failed"), ` ${g.name}: `, g.detail ?? "")))),
    h("button", { class: "button subtle", type: "button", on: { click: () => { chosen = null; refresh(); } } }, "Close"));
}

export default {
  title: "Models",
  nav: "models",
  async load() {
    const versions = (await get("/models")).sort((a, b) => a.name.localeCompare(b.name) || b.version - a.version);
    const fetched = versions.slice(0, LINEAGE_SHOWN);
    const lineages = await Promise.all(fetched.map((m) =>
      get(`/models/${encodeURIComponent(m.name)}/versions/${m.version}/lineage`).catch(() => null)));
    return { versions, lineage: Object.fromEntries(fetched.map((m, i) => [key(m), lineages[i]])) };
  },
  render({ versions, lineage }, { refresh }) {
    if (!versions.length) return card("Models", h("p", { class: "muted empty" }, "No model yet: train one with `edgefleet model train`."));
    const rows = versions.map((m) => [
      h("button", { class: "linklike", type: "button", "data-version": key(m), on: { click: () => { chosen = key(m); refresh(); } } }, `${m.name} v${m.version}`),
      `${m.format} · ${m.runtime}`,
      m.task === "regression" ? `MAE ${m.mae_fp32?.toFixed(3)} → ${m.mae_int8?.toFixed(3)}` : `${pct(m.accuracy_fp32)} → ${pct(m.accuracy_int8)}`,
      `${bytes(m.size_fp32)} → ${bytes(m.size_bytes)}`,
      gates(lineage[key(m)]),
      when(m.created_at),
    ]);
    const newest = versions.slice(0, 6);
    const sizes = barChart({
      title: "Size, fp32 against int8",
      unit: "bytes",
      bars: newest.flatMap((m) => [
        { label: `${m.name} v${m.version} fp32`, value: m.size_fp32 ?? 0, text: bytes(m.size_fp32), colour: "#94a3b8" },
        { label: `${m.name} v${m.version} int8`, value: m.size_bytes ?? 0, text: bytes(m.size_bytes), colour: "#0f766e" },
      ]),
      labelWidth: 170,
    });
    const accuracy = barChart({
      title: "Hold-out accuracy, fp32 against int8",
      unit: "%",
      bars: newest.filter((m) => m.accuracy_fp32 !== null).flatMap((m) => [
        { label: `${m.name} v${m.version} fp32`, value: m.accuracy_fp32 * 100, text: pct(m.accuracy_fp32), colour: "#94a3b8" },
        { label: `${m.name} v${m.version} int8`, value: m.accuracy_int8 * 100, text: pct(m.accuracy_int8), colour: "#2563eb" },
      ]),
      max: 100,
      labelWidth: 170,
    });
    const open = versions.find((m) => key(m) === chosen);
    return h("div", { class: "page" },
      card(`Versions (${versions.length})`, table(["Model", "Format", "Accuracy fp32 → int8", "Size fp32 → int8", "Gates", "Created"], rows),
        h("p", { class: "muted small" }, "Pick a version to see its lineage.")),
      open ? lineagePanel(open, lineage[key(open)], refresh) : null,
      h("div", { class: "grid-2" }, card(null, sizes), card(null, accuracy)));
  },
};
