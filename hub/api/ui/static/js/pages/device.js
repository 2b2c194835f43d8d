// One device: its state, models and versions, its last hour of telemetry as charts, its
// rollout events and its drift.

import { get, query } from "../api.js";
import { lineChart } from "../charts.js";
import { ago, badge, card, h, link, pct, short, table, when } from "../dom.js";

const ROLLOUTS_SCANNED = 3; // the newest rollouts whose events are shown
const DRIFT_RANGE_S = 1800;
const TELEMETRY = { start: "-30m", resolution_s: 15 }; // 120 points at most

function telemetryCharts(t) {
  const pts = t.points ?? [];
  const at = (p) => p.end;
  const series = (name, f) => ({ name, points: pts.map((p) => [at(p), f(p)]) });
  return h("div", { class: "grid-2" },
    // per second of the window: the newest window is still filling
    lineChart({ title: "Inferences", unit: "calls/s", series: [series("inferences", (p) => p.count / Math.max(1, p.end - p.start))] }),
    lineChart({ title: "Latency", unit: "µs", series: [series("p50", (p) => p.latency_us?.p50 ?? null), series("p95", (p) => p.latency_us?.p95 ?? null), series("p99", (p) => p.latency_us?.p99 ?? null)] }),
    lineChart({ title: "Live accuracy on labelled rows", unit: "%", yMax: 100, series: [series("accuracy", (p) => (p.accuracy === null ? null : p.accuracy * 100))] }),
    lineChart({ title: "Error ratio", unit: "%", series: [series("errors", (p) => (p.error_ratio ?? 0) * 100)] }));
}

export function driftCharts(series, { limit = 6 } = {}) {
  const points = series.points ?? [];
  const features = new Map();
  for (const p of points) for (const [f, sc] of Object.entries(p.scores ?? {})) {
    if (sc.psi === null) continue;
    features.set(f, Math.max(features.get(f) ?? 0, sc.psi));
  }
  const top = [...features.entries()].sort((a, b) => b[1] - a[1]).slice(0, limit).map(([f]) => f);
  const label = (f) => (f === "__outputs__" ? "model outputs" : f);
  const metric = (m) => top.map((f) => ({ name: label(f), points: points.map((p) => [p.t, p.scores?.[f]?.[m] ?? null]) }));
  const versions = [...new Set(points.filter((p) => p.scores).map((p) => `v${p.version}`))];
  const note = [
    features.size > limit ? `The ${limit} of ${features.size} features with the highest PSI in this range` : null,
    versions.length ? `model ${versions.join(", ")}, ${Math.round(series.bucket_s)} s per point.` : null,
  ].filter(Boolean).join("; ") || null;
  const empty = points.length ? `Under ${series.min_rows} rows per ${Math.round(series.bucket_s)} s: no score yet` : "No drift window in this range";
  return h("div", { class: "grid-2" },
    lineChart({ title: "PSI per feature", unit: "population stability index", series: metric("psi"), thresholds: [{ value: series.psi_threshold, label: `alert above ${series.psi_threshold}` }], tMin: series.since, tMax: series.until, note, empty, legend: true }),
    lineChart({ title: "JS distance per feature", unit: "Jensen–Shannon, 0–1", series: metric("js"), thresholds: [{ value: series.js_threshold, label: `alert above ${series.js_threshold}` }], tMin: series.since, tMax: series.until, note, empty, legend: true }));
}

export default {
  title: "Device",
  nav: "fleet",
  heading: (data) => `Device ${data.device.id}`,
  async load(id) {
    const enc = encodeURIComponent(id);
    const [device, telemetry, alerts, rollouts] = await Promise.all([
      get(`/devices/${enc}`),
      get(`/telemetry/devices/${enc}${query(TELEMETRY)}`),
      get("/drift/alerts"),
      get("/rollouts"),
    ]);
    const newest = rollouts.sort((a, b) => (b.started_at ?? 0) - (a.started_at ?? 0)).slice(0, ROLLOUTS_SCANNED);
    const events = (await Promise.all(newest.map((r) => get(`/rollouts/${encodeURIComponent(r.id)}/events${query({ device: id })}`)))).flat();
    const mine = alerts.filter((a) => (a.scope === "device" ? a.scope_id === id : a.devices.includes(id)));
    const model = Object.keys(device.models ?? {})[0] ?? device.model;
    const drift = model ? await get(`/ui/data/drift-series${query({ model, scope: "device", id, range_s: DRIFT_RANGE_S, buckets: 30 })}`) : null;
    return { device, telemetry, alerts: mine, events: events.sort((a, b) => b.ts - a.ts).slice(0, 40), drift };
  },
  render({ device: d, telemetry, alerts, events, drift }) {
    const modelRows = Object.entries(d.models ?? {}).map(([name, m]) => [name, `v${m.version}`, h("code", {}, short(m.sha256))]);
    const last = (telemetry.points ?? []).at(-1);
    return h("div", { class: "page" },
      h("div", { class: "grid-2" },
        card("State",
          h("dl", { class: "facts" },
            h("dt", {}, "status"), h("dd", {}, badge(d.status), d.revoked ? badge("failed", "revoked") : null),
            h("dt", {}, "class"), h("dd", {}, d.device_class ?? "—"),
            h("dt", {}, "runtime"), h("dd", {}, d.runtime ?? "—"),
            h("dt", {}, "agent"), h("dd", {}, d.agent_version ?? "—"),
            h("dt", {}, "trust root"), h("dd", {}, d.root_version === null ? "—" : `v${d.root_version}`),
            h("dt", {}, "last seen"), h("dd", {}, `${ago(d.last_seen)} (${when(d.last_seen)})`),
            h("dt", {}, "enrolled"), h("dd", {}, when(d.first_seen)),
            h("dt", {}, "accuracy, last window"), h("dd", {}, last ? pct(last.accuracy) : "—"))),
        card("Models", table(["Model", "Version", "SHA-256"], modelRows, { empty: "No model installed yet." }))),
      card("Telemetry, last 30 minutes", (telemetry.points ?? []).length ? telemetryCharts(telemetry) : h("p", { class: "muted empty" }, "No telemetry in the last 30 minutes.")),
      card("Drift",
        alerts.length ? table(["Alert", "State", "Scope", "Features", "Opened"], alerts.map((a) => [String(a.id), badge(a.state === "open" ? "failed" : "completed", a.state), `${a.scope} ${a.scope_id}`, a.features.join(", "), when(a.opened_at)])) : h("p", { class: "muted" }, "No drift alert names this device."),
        drift ? driftCharts(drift) : null),
      card("Rollout events", table(["Time", "Rollout", "Stage", "Version", "Reason", "Detail"], events.map((e) => [when(e.ts), link(`#/rollouts/${encodeURIComponent(e.deployment_id)}`, e.deployment_id), badge(e.stage), `v${e.version}`, e.reason ?? "", e.detail ?? ""]), { empty: "No rollout has reached this device lately." })));
  },
};
