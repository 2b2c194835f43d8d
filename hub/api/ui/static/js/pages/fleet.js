// Fleet: how many devices are online, offline or unknown; which model versions run per
// device class and per group; which devices need attention.

import { get } from "../api.js";
import { barChart, PALETTE } from "../charts.js";
import { ago, badge, card, h, link, stat, table } from "../dom.js";

const SHOWN = 200; // devices listed in the table

function versionsOf(d) {
  const models = Object.entries(d.models ?? {});
  if (!models.length) return ["no model"];
  return models.map(([name, m]) => `${name} v${m.version}`);
}

function versionBars(title, groups) {
  const labels = [...new Set(Object.values(groups).flatMap((g) => Object.keys(g)))].sort();
  const colour = Object.fromEntries(labels.map((l, i) => [l, l === "no model" ? "#cbd5e1" : PALETTE[i % PALETTE.length]]));
  const blocks = Object.entries(groups).sort().map(([group, counts]) =>
    h("div", { class: "version-group" },
      barChart({
        title: group,
        unit: "devices",
        bars: Object.entries(counts).sort().map(([label, n]) => ({ label, value: n, colour: colour[label], text: `${n}` })),
        width: 520,
      })));
  return card(title, blocks.length ? blocks : h("p", { class: "muted empty" }, "No devices yet."));
}

function attention(devices, alerts) {
  const drifting = new Map();
  for (const a of alerts) for (const id of a.scope === "device" ? [a.scope_id] : a.devices) {
    drifting.set(id, [...(drifting.get(id) ?? []), ...a.features]);
  }
  const rows = [];
  for (const d of devices) {
    const why = [];
    if (d.revoked) why.push("revoked");
    if (d.status === "offline") why.push(`offline since ${ago(d.last_seen)}`);
    if (d.status === "unknown") why.push("never reported");
    if (drifting.has(d.id)) why.push(`drift on ${[...new Set(drifting.get(d.id))].join(", ")}`);
    if (why.length) rows.push([link(`#/device/${encodeURIComponent(d.id)}`, d.id), badge(d.status), d.device_class, why.join("; ")]);
  }
  return rows;
}

export default {
  title: "Fleet",
  nav: "fleet",
  async load() {
    const [devices, alerts, groups] = await Promise.all([
      get("/devices"),
      get("/drift/alerts?state=open"),
      get("/ui/data/groups"),
    ]);
    return { devices, alerts, groups };
  },
  render({ devices, alerts, groups }) {
    const count = (status) => devices.filter((d) => d.status === status).length;
    const byClass = {};
    for (const d of devices) {
      const g = (byClass[d.device_class ?? "no class"] ??= {});
      for (const v of versionsOf(d)) g[v] = (g[v] ?? 0) + 1;
    }
    const byId = new Map(devices.map((d) => [d.id, d]));
    const byGroup = {};
    for (const [tag, ids] of Object.entries(groups)) {
      const g = (byGroup[tag] = {});
      for (const id of ids) for (const v of versionsOf(byId.get(id) ?? {})) g[v] = (g[v] ?? 0) + 1;
    }
    const needs = attention(devices, alerts);
    const listed = devices.slice(0, SHOWN).map((d) => [
      link(`#/device/${encodeURIComponent(d.id)}`, d.id),
      badge(d.status),
      d.device_class ?? "—",
      versionsOf(d).join(", "),
      d.agent_version ?? "—",
      ago(d.last_seen),
    ]);
    return h("div", { class: "page" },
      h("div", { class: "stats" },
        stat("online", count("online"), "ok"),
        stat("offline", count("offline"), count("offline") ? "bad" : null),
        stat("unknown", count("unknown"), count("unknown") ? "warn" : null),
        stat("devices", devices.length),
        stat("open drift alerts", alerts.length, alerts.length ? "warn" : null)),
      card("Needs attention", table(["Device", "Status", "Class", "Why"], needs, { empty: "Nothing needs attention: every device is online and none drifts." })),
      h("div", { class: "grid-2" },
        versionBars("Versions per device class", byClass),
        Object.keys(byGroup).length ? versionBars("Versions per group", byGroup)
          : card("Versions per group", h("p", { class: "muted empty" }, "No groups: tag devices (PUT /devices/{id}/tags) to see them here."))),
      card(`Devices (${devices.length})`,
        table(["Device", "Status", "Class", "Models", "Agent", "Last seen"], listed, { empty: "No device has enrolled yet." }),
        devices.length > SHOWN ? h("p", { class: "muted small" }, `The first ${SHOWN} of ${devices.length} devices.`) : null),
    );
  },
};
