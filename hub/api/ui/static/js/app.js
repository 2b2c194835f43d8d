// The dashboard: a page per hash route (#/fleet, #/device/<id>, #/rollouts, #/rollouts/<id>,
// #/models, #/drift, #/audit), each reloaded every REFRESH_MS and redrawn when its data
// changed, so an operator watches a rollout move without reloading.

import { ApiError, post } from "./api.js";
import { h } from "./dom.js";
import audit from "./pages/audit.js";
import device from "./pages/device.js";
import drift from "./pages/drift.js";
import fleet from "./pages/fleet.js";
import models from "./pages/models.js";
import rollout from "./pages/rollout.js";
import rollouts from "./pages/rollouts.js";

const REFRESH_MS = 2000;
const ROUTES = [
  [/^#\/fleet$/, fleet],
  [/^#\/device\/([^/]+)$/, device],
  [/^#\/rollouts$/, rollouts],
  [/^#\/rollouts\/([^/]+)$/, rollout],
  [/^#\/models$/, models],
  [/^#\/drift$/, drift],
  [/^#\/audit$/, audit],
];

const main = document.getElementById("main");
const title = document.getElementById("title");
const banner = document.getElementById("banner");
const liveDot = document.getElementById("live-dot");
const liveText = document.getElementById("live-text");

let current = null; // {page, args, hash, last, timer, generation}
let generation = 0;

function resolve(hash) {
  for (const [pattern, page] of ROUTES) {
    const m = pattern.exec(hash);
    if (m) return { page, args: m.slice(1).map(decodeURIComponent) };
  }
  return null;
}

function showError(message) {
  banner.textContent = message;
  banner.hidden = !message;
}

function markNav(page) {
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === page.nav);
  }
}

async function refresh(force = false) {
  const view = current;
  if (!view) return;
  const mine = view.generation;
  try {
    const data = await view.page.load(...view.args);
    if (mine !== generation) return; // the operator moved to another page meanwhile
    const text = JSON.stringify(data);
    if (force || text !== view.last) {
      view.last = text;
      const y = window.scrollY;
      main.replaceChildren(view.page.render(data, { refresh: () => refresh(true), args: view.args }));
      window.scrollTo(0, y);
      title.textContent = view.page.heading ? view.page.heading(data, ...view.args) : view.page.title;
    }
    showError("");
    liveDot.className = "dot ok";
    liveText.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (mine !== generation) return;
    liveDot.className = "dot bad";
    liveText.textContent = "not updating";
    if (e instanceof ApiError && e.status === 403 && view.page.forbidden) {
      main.replaceChildren(view.page.forbidden(e));
      view.last = null;
    } else {
      showError(e instanceof ApiError ? `The hub answered ${e.status}: ${e.message}` : `Cannot reach the hub: ${e.message}`);
    }
  }
}

function navigate() {
  if (!location.hash || location.hash === "#" || location.hash === "#/") {
    location.replace("#/fleet");
    return;
  }
  const found = resolve(location.hash);
  if (current) clearInterval(current.timer);
  generation += 1;
  if (!found) {
    current = null;
    title.textContent = "Not found";
    main.replaceChildren(h("p", { class: "muted" }, "There is no such page. ", h("a", { href: "#/fleet" }, "Back to the fleet")));
    return;
  }
  current = { ...found, hash: location.hash, last: null, generation };
  markNav(found.page);
  title.textContent = found.page.title;
  main.replaceChildren(h("p", { class: "muted loading" }, "Loading…"));
  current.timer = setInterval(() => refresh(), REFRESH_MS);
  refresh(true);
}

document.getElementById("sign-out").addEventListener("click", async () => {
  try {
    await post("/ui/session/end");
  } finally {
    window.location.assign("/ui");
  }
});

window.addEventListener("hashchange", navigate);
navigate();
