// bookrec web page: tabs, hash routing, the service-health banner and the footer.
// Routes: #/readers[/id], #/new, #/book[/isbn], #/model, #/system.

import { h, fmt } from "./js/dom.js";
import { api, onAvailability } from "./js/api.js";
import { state } from "./js/state.js";
import { createKnownView } from "./js/views/known.js";
import { createNewReaderView } from "./js/views/newreader.js";
import { createBookView } from "./js/views/book.js";
import { createModelView } from "./js/views/model.js";
import { createSystemView } from "./js/views/system.js";

const TABS = [
  ["readers", "Readers", createKnownView],
  ["new", "New reader", createNewReaderView],
  ["book", "Books", createBookView],
  ["model", "Model", createModelView],
  ["system", "System", createSystemView],
];

const tablist = document.getElementById("tabs");
const main = document.getElementById("main");
const banner = document.getElementById("banner");
const footerStatus = document.getElementById("footer-status");

const views = new Map();
const buttons = new Map();

for (const [key, label, create] of TABS) {
  const tabId = `tab-${key}`;
  const panelId = `panel-${key}`;
  const button = h("button", {
    type: "button", role: "tab", id: tabId, class: "tab", "aria-selected": "false", "aria-controls": panelId, tabindex: "-1",
  }, label);
  button.addEventListener("click", () => { location.hash = `#/${key}`; });
  tablist.append(button);
  buttons.set(key, button);
  const view = create();
  const panel = h("section", { role: "tabpanel", id: panelId, "aria-labelledby": tabId, class: "panel-host", hidden: true, tabindex: "-1" }, view.root);
  main.append(panel);
  views.set(key, { view, panel });
}

// Arrow keys move between tabs (WAI-ARIA tabs pattern, automatic activation).
tablist.addEventListener("keydown", (ev) => {
  const keys = [...buttons.keys()];
  const index = keys.indexOf(ev.target.id.replace(/^tab-/, ""));
  if (index < 0) return;
  let next = null;
  if (ev.key === "ArrowRight") next = (index + 1) % keys.length;
  else if (ev.key === "ArrowLeft") next = (index - 1 + keys.length) % keys.length;
  else if (ev.key === "Home") next = 0;
  else if (ev.key === "End") next = keys.length - 1;
  if (next === null) return;
  ev.preventDefault();
  location.hash = `#/${keys[next]}`;
  buttons.get(keys[next]).focus();
});

// An address no view answers to gets its own panel, so nothing a view showed earlier is taken
// for an answer to it.
const notFound = h("section", { id: "panel-not-found", class: "panel-host", hidden: true, tabindex: "-1" },
  h("div", { class: "status status-error not-found", role: "alert" },
    h("h2", { class: "status-title" }, "Page not found"),
    h("p", { class: "status-message" }, "There is no page at this address. ",
      h("a", { href: "#/readers" }, "Go to the home page"), " or pick a tab above.")));
main.append(notFound);

let currentKey = null;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const key = parts[0] || "readers";
  const known = views.has(key);
  let param = null;
  if (parts.length > 1) {
    try {
      param = decodeURIComponent(parts.slice(1).join("/"));
    } catch {
      param = null;
    }
  }
  for (const [k, { panel }] of views) {
    const active = k === key;
    panel.hidden = !active;
    const button = buttons.get(k);
    button.setAttribute("aria-selected", active ? "true" : "false");
    // On an unknown address the first tab stays reachable with the Tab key.
    button.tabIndex = active || (!known && k === TABS[0][0]) ? 0 : -1;
  }
  notFound.hidden = known;
  if (currentKey !== null && currentKey !== key) window.scrollTo(0, 0);
  currentKey = key;
  if (!known) {
    document.title = "Page not found · bookrec";
    return;
  }
  const { view } = views.get(key);
  view.show(param);
  document.title = `${buttons.get(key).textContent} · bookrec`;
}

window.addEventListener("hashchange", route);

// The skip link moves focus without touching the hash: "#main" is no route.
document.querySelector(".skip-link").addEventListener("click", (ev) => {
  ev.preventDefault();
  main.focus();
});

// ---- health: a banner while the service is not ready, rechecked until it is ----------------

let healthTimer = null;

function sentence(text) {
  const t = String(text || "").trim();
  if (!t) return "";
  return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
}

function showBanner(title, message) {
  banner.replaceChildren(h("strong", null, title), " ", h("span", null, message));
  banner.hidden = false;
}

async function checkHealth() {
  clearTimeout(healthTimer);
  let retryIn = 10;
  try {
    const health = await api.health();
    banner.hidden = true;
    state.modelVersion = health.model_version || null;
    footerStatus.textContent = `Model ${fmt(health.model_version)} · store ${fmt(health.store)}`;
    return;
  } catch (err) {
    const body = err.detail && typeof err.detail === "object" ? err.detail : {};
    const reason = typeof body.reason === "string" ? body.reason : "";
    // 503 with the store answering means nothing has been published yet.
    if (err.status === 503 && body.store === "ok") {
      showBanner("No model published yet.", sentence(reason) || "Recommendations appear once a model is trained and published (bookrec batch).");
    } else if (err.status === 503) {
      showBanner("The service is temporarily unavailable.", `${sentence(reason) || "The store is not answering."} The page keeps checking.`);
    } else {
      showBanner("Can't reach the service.", err.message || "");
    }
    footerStatus.textContent = "Service unavailable";
    if (err.retryAfter) retryIn = Math.max(2, err.retryAfter);
  }
  healthTimer = setTimeout(checkHealth, retryIn * 1000);
}

// Any failed call rechecks health at once; the first success after an outage clears the banner.
let recheckQueued = false;
onAvailability((available) => {
  if ((available && banner.hidden) || recheckQueued) return;
  recheckQueued = true;
  setTimeout(() => { recheckQueued = false; checkHealth(); }, 50);
});

route();
checkHealth();
// The interval level of stored recommendations lives in the model's meta; fetch it quietly.
api.modelInfo({ traces: false }).then((meta) => {
  if (typeof meta.interval_level === "number") state.intervalLevel = meta.interval_level;
  const ranking = meta.ranking && typeof meta.ranking === "object" ? meta.ranking : {};
  if (typeof ranking.liked_threshold === "number") state.likedThreshold = ranking.liked_threshold;
}).catch(() => {});
