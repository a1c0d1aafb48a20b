// System view: health of the service and the store, and what is being served.

import { h, clear, fmt, fmtInt, humanise, isNum } from "../dom.js";
import { api } from "../api.js";
import { loading, errorBox } from "../components.js";
import { stackedShare } from "../charts.js";

function figureTile(label, value, hint) {
  const small = String(value).length > 10; // a version id, not a count
  return h("div", { class: "tile" }, h("span", { class: small ? "tile-value tile-value-small" : "tile-value" }, value), h("span", { class: "tile-label" }, label), hint ? h("span", { class: "tile-hint muted" }, hint) : null);
}

function flatEntries(obj, prefix = "") {
  const out = [];
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) out.push(...flatEntries(v, `${prefix}${k} `));
    else if (v !== undefined && v !== null) out.push([`${prefix}${k}`, Array.isArray(v) ? v.join(", ") : v]);
  }
  return out;
}

export function createSystemView() {
  const body = h("div", { class: "system-body", "aria-live": "polite" });
  const refresh = h("button", { type: "button", class: "button button-quiet" }, "Refresh");
  let controller = null;

  async function load() {
    if (controller) controller.abort();
    controller = new AbortController();
    clear(body).append(loading("Checking the service…"));
    let health;
    try {
      health = await api.health({ signal: controller.signal });
    } catch (err) {
      if (err.name === "AbortError") return;
      health = { status: "unavailable", reason: err.detail && err.detail.reason ? err.detail.reason : err.message };
    }
    const ok = health.status === "ok";
    const healthBlock = h("section", { class: "panel" },
      h("h2", { class: "panel-title" }, "Health"),
      h("p", { class: `verdict ${ok ? "verdict-ok" : "verdict-warn"}` },
        h("strong", null, ok ? "Healthy" : "Unavailable"),
        ok ? `: the store answers and model ${fmt(health.model_version)} is being served.` : `: ${fmt(health.reason)}`));
    try {
      const stats = await api.stats(controller.signal);
      const tiers = stats.coverage_by_tier && typeof stats.coverage_by_tier === "object" ? stats.coverage_by_tier : null;
      const storeEntries = flatEntries(stats.store);
      clear(body).append(healthBlock,
        h("section", { class: "panel" },
          h("h2", { class: "panel-title" }, "Serving"),
          h("div", { class: "tiles" },
            figureTile("readers with recommendations", fmtInt(stats.users_with_recommendations)),
            figureTile("books in the catalogue", fmtInt(stats.books)),
            figureTile("model version", fmt(stats.model_version))),
          tiers ? h("div", null, h("h3", { class: "sub-title" }, "Readers by basis"), stackedShare(Object.entries(tiers), { label: "Readers by basis" })) : null),
        h("section", { class: "panel" },
          h("h2", { class: "panel-title" }, "Store"),
          storeEntries.length
            ? h("dl", { class: "facts facts-grid" }, storeEntries.map(([k, v]) => [h("dt", null, humanise(k)), h("dd", null, isNum(v) ? (Number.isInteger(v) ? fmtInt(v) : fmt(v, 3)) : fmt(v))]))
            : h("p", { class: "muted" }, "No store details reported.")));
    } catch (err) {
      if (err.name === "AbortError") return;
      clear(body).append(healthBlock, errorBox(err, { title: "Couldn't load the statistics", retry: load }));
    }
  }

  refresh.addEventListener("click", load);
  const root = h("div", { class: "view view-system" },
    h("div", { class: "inline view-head" }, h("p", { class: "intro" }, "What the service is doing right now."), refresh),
    body);
  return { root, show: load };
}
