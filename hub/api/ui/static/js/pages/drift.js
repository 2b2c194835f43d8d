// Drift: PSI and JS distance per feature over time for the fleet, the alerts, the
// drift event stream and the closed loop's runs (alert -> capture -> retrain -> canary).

import { get, query } from "../api.js";
import { badge, card, h, link, table, when } from "../dom.js";
import { driftCharts } from "./device.js";

const RANGES = [[300, "5 min"], [900, "15 min"], [3600, "1 h"], [6 * 3600, "6 h"], [86400, "24 h"]];
const BUCKETS = 60; // points per chart
let chosenModel = null;
let rangeS = 900;

function devicesOf(list) {
  if (!list.length) return "—";
  const shown = list.slice(0, 4).map((id, i) => [i ? ", " : "", link(`#/device/${encodeURIComponent(id)}`, id)]);
  return h("span", {}, shown, list.length > 4 ? ` and ${list.length - 4} more` : "");
}

function picker(models, model, refresh) {
  const select = h("select", { id: "drift-model", "aria-label": "Model", on: { change: (e) => { chosenModel = e.target.value; refresh(); } } },
    models.map((m) => h("option", { value: m, selected: m === model }, m)));
  const range = h("select", { id: "drift-range", "aria-label": "Range", on: { change: (e) => { rangeS = Number(e.target.value); refresh(); } } },
    RANGES.map(([s, label]) => h("option", { value: s, selected: s === rangeS }, `last ${label}`)));
  return h("div", { class: "toolbar" }, h("label", {}, "Model ", select), h("label", {}, "Range ", range));
}

export default {
  title: "Drift",
  nav: "drift",
  async load() {
    const models = [...new Set((await get("/models")).map((m) => m.name))].sort();
    const model = models.includes(chosenModel) ? chosenModel : models[0] ?? null;
    const [series, alerts, events, runs] = await Promise.all([
      model ? get(`/ui/data/drift-series${query({ model, range_s: rangeS, buckets: BUCKETS })}`) : null,
      get("/drift/alerts?limit=50"),
      get(`/drift/events${query({ since: "-24h", limit: 1000 })}`),
      get("/loop/runs?limit=20"),
    ]);
    return { models, model, series, alerts, events: events.slice(-30).reverse(), runs, range: rangeS };
  },
  render({ models, model, series, alerts, events, runs }, { refresh }) {
    const open = alerts.filter((a) => a.state === "open");
    const stale = alerts.filter((a) => a.state === "stale");
    const alertRows = [...open, ...stale, ...alerts.filter((a) => a.state === "cleared")].map((a) => [
      String(a.id),
      a.state === "stale"  // its device fell silent: say since when, not "open"
        ? h("span", { title: a.stale_reason ?? "stale" }, badge("offline", "stale"), " ", a.stale_reason ?? "")
        : badge(a.state === "open" ? "failed" : "completed", a.state),
      `${a.model}${a.version ? ` v${a.version}` : ""}`,
      a.scope === "device" ? link(`#/device/${encodeURIComponent(a.scope_id)}`, a.scope_id) : `${a.scope} ${a.scope_id === "*" ? "(all)" : a.scope_id}`,
      a.features.map((f) => (f === "__outputs__" ? "model outputs" : f)).join(", "),
      devicesOf(a.devices),
      when(a.opened_at),
    ]);
    const runRows = runs.map((r) => [
      h("code", {}, r.id.slice(0, 12)),
      `${r.model}${r.from_version ? ` v${r.from_version}` : ""}${r.version ? ` → v${r.version}` : ""}`,
      badge(r.stage === "done" ? "completed" : r.stage === "failed" ? "failed" : r.stage === "skipped" ? "skipped" : "running", r.stage),
      r.features.join(", "),
      String(r.devices.length),
      r.rollout_id ? link(`#/rollouts/${encodeURIComponent(r.rollout_id)}`, r.rollout_id) : "—",
      r.detail ?? "",
      when(r.created_at),
    ]);
    return h("div", { class: "page" },
      h("div", { class: "stats" },
        h("div", { class: `stat ${open.length ? "tone-bad" : "tone-ok"}`, id: "open-alerts" },
          h("div", { class: "stat-value" }, String(open.length)), h("div", { class: "stat-label" }, "open alerts"))),
      card(model ? `Fleet drift of ${model}` : "Fleet drift",
        models.length ? picker(models, model, refresh) : null,
        series ? driftCharts(series) : h("p", { class: "muted empty" }, "No model yet: drift is measured against a model's training baseline.")),
      card("Alerts", table(["#", "State", "Model", "Scope", "Drifted", "Devices", "Opened"], alertRows, { empty: "No drift alert: every scope is within its thresholds." })),
      h("div", { class: "grid-2" },
        card("Drift events, last 24 h", table(["Time", "Event", "Scope", "Features"], events.map((e) => [when(e.ts), badge(e.kind === "raised" || e.kind === "resumed" ? "failed" : e.kind === "stale" ? "offline" : "completed", e.kind), `${e.scope} ${e.scope_id}`, e.detail ?? e.features.join(", ")]), { empty: "No alert raised or cleared." })),
        card("The loop's runs", table(["Run", "Model", "Stage", "Features", "Devices", "Rollout", "Detail", "Started"], runRows, { empty: "The loop has not run: it starts on a drift alert when a loop policy is set." }))));
  },
};
