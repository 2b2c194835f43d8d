// Rollouts: every rollout, newest first, with its state and progress.

import { get } from "../api.js";
import { colourOf, stackBar } from "../charts.js";
import { badge, card, h, link, table, when } from "../dom.js";

export function progressParts(counts) {
  const order = ["healthy", "activated", "staged", "verified", "downloading", "received", "sent", "pending", "timed_out", "refused", "failed", "rolled_back", "skipped"];
  const keys = [...order.filter((k) => counts[k]), ...Object.keys(counts).filter((k) => !order.includes(k))];
  return keys.map((k) => ({ label: k.replace("_", " "), value: counts[k], colour: colourOf(k) }));
}

export default {
  title: "Rollouts",
  nav: "rollouts",
  async load() {
    const list = (await get("/rollouts")).sort((a, b) => (b.started_at ?? 0) - (a.started_at ?? 0));
    const recent = list.slice(0, 20);
    const status = await Promise.all(recent.map((r) => get(`/rollouts/${encodeURIComponent(r.id)}`)));
    return { list, status };
  },
  render({ list, status }) {
    const rows = status.map((st) => [
      link(`#/rollouts/${encodeURIComponent(st.id)}`, st.id),
      h("span", { class: "nowrap" }, `${st.model} v${st.version}`),
      badge(st.state),
      `${st.wave} / ${st.waves}`,
      h("div", { class: "cell-progress" }, stackBar(progressParts(st.counts), st.devices, { label: `${st.converged} of ${st.devices} healthy` })),
      `${st.converged} / ${st.devices}`,
      when(st.created_at),
    ]);
    return h("div", { class: "page" },
      card(`Rollouts (${list.length})`,
        table(["Rollout", "Model", "State", "Wave", "Progress", "Healthy", "Started"], rows,
          { empty: "No rollout yet: start one with `edgefleet rollout start MODEL`." }),
        list.length > status.length ? h("p", { class: "muted small" }, `The newest ${status.length} of ${list.length}.`) : null));
  },
};
