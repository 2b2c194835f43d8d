// One rollout: live progress wave by wave, the failure ratio against its gate, each
// device's state and the latest events; pause / resume / abort for an operator.

import { can, get, post } from "../api.js";
import { barChart, stackBar } from "../charts.js";
import { badge, card, h, link, pct, table, when } from "../dom.js";
import { progressParts } from "./rollouts.js";

const EVENTS_SHOWN = 30;
let confirming = null; // the rollout whose abort awaits confirmation
let acting = null; // {id, message} of the last action, shown until the next one

function actions(st, refresh) {
  if (!can("operator")) return null;
  const act = async (verb, body) => {
    acting = { id: st.id, message: `${verb}…` };
    refresh();
    try {
      const after = await post(`/rollouts/${encodeURIComponent(st.id)}/${verb}`, body);
      acting = { id: st.id, message: `Done: the rollout is ${after.state}.` };
    } catch (e) {
      acting = { id: st.id, message: `Refused: ${e.message}`, bad: true };
    }
    confirming = null;
    refresh();
  };
  const open = st.state === "running" || st.state === "paused";
  const buttons = [];
  if (st.state === "running") buttons.push(h("button", { class: "button", type: "button", "data-action": "pause", on: { click: () => act("pause") } }, "Pause"));
  if (st.state === "paused") buttons.push(h("button", { class: "button primary", type: "button", "data-action": "resume", on: { click: () => act("resume") } }, "Resume"));
  if (open && confirming !== st.id) {
    buttons.push(h("button", { class: "button danger", type: "button", "data-action": "abort", on: { click: () => { confirming = st.id; refresh(); } } }, "Abort…"));
  }
  if (open && confirming === st.id) {
    buttons.push(
      h("span", { class: "confirm" }, "Abort this rollout? Devices already updated keep the new version unless rolled back."),
      h("button", { class: "button danger", type: "button", "data-action": "abort-confirm", on: { click: () => act("abort", { rollback: false }) } }, "Abort"),
      h("button", { class: "button danger subtle", type: "button", "data-action": "abort-rollback", on: { click: () => act("abort", { rollback: true }) } }, "Abort and roll back"),
      h("button", { class: "button subtle", type: "button", on: { click: () => { confirming = null; refresh(); } } }, "Keep it"));
  }
  const note = acting && acting.id === st.id ? h("span", { class: acting.bad ? "action-note bad" : "action-note" }, acting.message) : null;
  if (!buttons.length && !note) return null;
  return h("div", { class: "actions" }, buttons, note);
}

function waves(st, devices) {
  const byWave = new Map();
  for (const d of devices) {
    const counts = byWave.get(d.wave) ?? {};
    counts[d.state] = (counts[d.state] ?? 0) + 1;
    byWave.set(d.wave, counts);
  }
  const rows = [...byWave.entries()].sort((a, b) => a[0] - b[0]).map(([wave, counts]) => {
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    const name = `Wave ${wave + 1}${wave === 0 && (st.spec.canary || st.spec.canary_percent) ? " (canary)" : ""}`;
    return h("div", { class: "wave" },
      h("div", { class: "wave-head" }, h("strong", {}, name), h("span", { class: "muted" }, ` ${counts.healthy ?? 0} / ${total} healthy`)),
      stackBar(progressParts(counts), total, { label: name }));
  });
  return rows.length ? rows : h("p", { class: "muted empty" }, "No device has been assigned yet.");
}

function gate(st) {
  const ratio = st.failure_ratio ?? 0, limit = st.spec.max_failure_ratio;
  return barChart({
    title: "Failure ratio against the gate",
    unit: "%",
    bars: [{ label: "failure ratio", value: ratio * 100, text: pct(ratio), colour: ratio > limit ? "#dc2626" : "#16a34a" }],
    max: Math.max(limit * 100 * 1.5, ratio * 100, 5),
    marker: { value: limit * 100, label: `the gate, ${pct(limit, 0)}: past it (after ${st.spec.min_sample} device(s) reported) the rollout halts` },
    width: 420,
    labelWidth: 100,
  });
}

export default {
  title: "Rollout",
  nav: "rollouts",
  heading: (data) => `Rollout ${data.st.id} · ${data.st.model} v${data.st.version}`,
  async load(id) {
    const path = `/rollouts/${encodeURIComponent(id)}`;
    const [st, devices, events] = await Promise.all([get(path), get(`${path}/devices`), get(`${path}/events`)]);
    return { st, devices, events: events.slice(-EVENTS_SHOWN).reverse() };
  },
  render({ st, devices, events }, { refresh }) {
    const deviceRows = [...devices].sort((a, b) => a.wave - b.wave || a.device_id.localeCompare(b.device_id)).map((d) => [
      link(`#/device/${encodeURIComponent(d.device_id)}`, d.device_id),
      String(d.wave + 1),
      badge(d.state, d.state.replace("_", " ")),
      String(d.attempts),
      d.reason ?? "",
      d.detail ?? "",
      when(d.updated_at),
    ]);
    const eventRows = events.map((e) => [when(e.ts), link(`#/device/${encodeURIComponent(e.device_id)}`, e.device_id), badge(e.stage), e.reason ?? "", e.detail ?? ""]);
    return h("div", { class: "page", "data-rollout-state": st.state },
      h("div", { class: "summary-row" },
        h("div", { class: "summary" },
          badge(st.state), " ",
          h("span", { class: "big", id: "converged" }, `${st.converged} / ${st.devices}`), h("span", { class: "muted" }, " devices healthy"),
          h("span", { class: "muted" }, ` · wave ${st.wave} of ${st.waves} · started ${when(st.created_at)}`),
          st.halted_reason ? h("p", { class: "error" }, `Halted: ${st.halted_reason}`) : null),
        actions(st, refresh)),
      h("div", { class: "grid-2" },
        card("Progress, wave by wave", stackBar(progressParts(st.counts), st.devices, { label: "all devices" }), h("hr", {}), waves(st, devices)),
        card("Health gate", gate(st),
          h("dl", { class: "facts" },
            h("dt", {}, "failures"), h("dd", {}, String(st.failures)),
            h("dt", {}, "rolled back"), h("dd", {}, String(st.rolled_back)),
            h("dt", {}, "in probation"), h("dd", {}, String(st.in_probation)),
            h("dt", {}, "offline"), h("dd", {}, String(st.offline))))),
      card(`Devices (${devices.length})`, table(["Device", "Wave", "State", "Attempts", "Reason", "Detail", "Updated"], deviceRows, { numeric: [1, 3] })),
      card("Latest events", table(["Time", "Device", "Stage", "Reason", "Detail"], eventRows, { empty: "No event yet." })));
  },
};
