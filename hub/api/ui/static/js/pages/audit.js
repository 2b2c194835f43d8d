// The audit log (admin keys only): every change made through the API, newest first.

import { can, get } from "../api.js";
import { badge, card, h, table, when } from "../dom.js";

const LIMIT = 200;

function needsAdmin() {
  return card("Needs an admin key",
    h("p", { class: "notice", id: "needs-admin" }, "The audit log needs an admin key. You are signed in with a key of a lower role: sign out and sign in with an admin key to read it."));
}

export default {
  title: "Audit log",
  nav: "audit",
  async load() {
    if (!can("admin")) return { allowed: false };
    return { allowed: true, records: await get(`/audit?limit=${LIMIT}`) };
  },
  forbidden: needsAdmin,
  render({ allowed, records }) {
    if (!allowed) return needsAdmin();
    const rows = records.map((r) => [
      when(r.ts),
      h("div", { class: "actor" },
        h("div", {}, r.actor_name ?? r.actor_keyid ?? "—"),
        r.actor_name ? h("div", { class: "muted small" }, `key ${r.actor_keyid}`) : null,
        r.claimed_keyid ? h("div", { class: "muted small" }, `claimed ${r.claimed_keyid}`) : null),
      r.role ?? "—",
      h("code", {}, r.action),
      r.target ?? "",
      // a summarised refusal counts the calls of its caller in its minute
      badge(r.outcome === "ok" ? "healthy" : "failed", `${r.outcome} ${r.status}${r.count > 1 ? ` ×${r.count}` : ""}`),
      r.detail ?? "",
    ]);
    return card(`Audit log (newest ${records.length})`,
      table(["Time", "Actor", "Role", "Action", "Target", "Outcome", "Detail"], rows, { empty: "No change has been made yet." }));
  },
};
