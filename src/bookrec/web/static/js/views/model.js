// Model view: the pictures that say whether to trust the model. MCMC traces per chain,
// R-hat / ESS, calibration of the intervals, data and coverage, training time and version.

import { h, clear, fmt, fmtInt, fmtSeconds, fmtDate, fmtPercent, humanise, isNum } from "../dom.js";
import { api } from "../api.js";
import { loading, empty, errorBox } from "../components.js";
import { traceChart, calibrationChart, barChart, stackedShare, CHAIN_COLOURS } from "../charts.js";
import { state } from "../state.js";

// Vehtari et al. (2021): R-hat below 1.01 and a bulk/tail ESS of at least 100 per chain.
const RHAT_OK = 1.01;
const ESS_PER_CHAIN = 100;

function card(title, ...children) {
  return h("section", { class: "panel" }, h("h2", { class: "panel-title" }, title), ...children);
}

function wide(panel) {
  panel.classList.add("panel-wide");
  return panel;
}

function figure(chart, caption) {
  return h("figure", { class: "figure" }, chart, caption ? h("figcaption", null, caption) : null);
}

function keyValues(entries) {
  const rows = entries.filter(([, v]) => v !== undefined && v !== null && typeof v !== "object");
  if (!rows.length) return empty("Nothing recorded.");
  return h("dl", { class: "facts facts-grid" }, rows.map(([k, v]) => [h("dt", null, humanise(k)), h("dd", null, isNum(v) ? (Number.isInteger(v) ? fmtInt(v) : fmt(v, 4)) : fmt(v))]));
}

function convergencePanel(meta) {
  const conv = meta.convergence && typeof meta.convergence === "object" ? meta.convergence : {};
  const chains = isNum(meta.n_chains) ? meta.n_chains : 1;
  const rhat = conv.rhat || {};
  const bulk = conv.ess_bulk || {};
  const tail = conv.ess_tail || {};
  const names = [...new Set([...Object.keys(rhat), ...Object.keys(bulk), ...Object.keys(tail)])];
  const converged = conv.converged === true;
  const verdict = h("p", { class: `verdict ${converged ? "verdict-ok" : "verdict-warn"}`, role: "status" },
    h("strong", null, conv.converged === undefined ? "No convergence check recorded" : converged ? "Chains converged" : "Chains have not converged"),
    " ",
    conv.converged === undefined ? "" : converged
      ? `: every R-hat is close to 1 and the effective sample sizes are large enough, so the ${chains} chains agree.`
      : ": treat the intervals with caution; more samples or a longer burn-in are needed.");
  const minEss = ESS_PER_CHAIN * chains;
  const cell = (v, good) => h("td", { class: isNum(v) ? (good(v) ? "ok" : "warn") : "" }, isNum(v) ? (v >= 100 ? fmtInt(v) : fmt(v, 3)) : "—");
  const table = names.length
    ? h("table", { class: "table" },
      h("caption", { class: "muted" }, `Good: R-hat < ${RHAT_OK}, ESS ≥ ${minEss} (${ESS_PER_CHAIN} per chain).`),
      h("thead", null, h("tr", null, h("th", { scope: "col" }, "Quantity"), h("th", { scope: "col" }, "R-hat"), h("th", { scope: "col" }, "ESS bulk"), h("th", { scope: "col" }, "ESS tail"))),
      h("tbody", null, names.map((n) => h("tr", null,
        h("th", { scope: "row" }, n),
        cell(rhat[n], (v) => v < RHAT_OK),
        cell(bulk[n], (v) => v >= minEss),
        cell(tail[n], (v) => v >= minEss)))))
    : null;
  return card("Convergence", verdict, table);
}

function tracesPanel(meta) {
  const traces = meta.traces && typeof meta.traces === "object" ? meta.traces : {};
  const names = Object.keys(traces);
  if (!names.length) return card("MCMC traces", empty("No traces were recorded."));
  const nChains = Math.max(...names.map((n) => (Array.isArray(traces[n]) ? traces[n].length : 0)));
  const legend = h("ul", { class: "legend" }, Array.from({ length: nChains }, (_, k) =>
    h("li", null, h("span", { class: "swatch", "aria-hidden": "true", vars: { "--swatch": CHAIN_COLOURS[k % CHAIN_COLOURS.length] } }), `chain ${k + 1}`)));
  return wide(card("MCMC traces",
    h("p", { class: "muted" }, "Each line is one chain after burn-in. Well-mixed chains overlap like noise around the same level."),
    legend,
    h("div", { class: "grid-charts" }, names.map((n) => figure(traceChart(n, traces[n]), n)))));
}

function calibrationPanel(meta) {
  const points = Array.isArray(meta.calibration) ? meta.calibration : [];
  const coverage = meta.test_metrics && meta.test_metrics.coverage;
  let table = null;
  const rows = points.filter((p) => p && isNum(p.nominal));
  if (rows.length) {
    table = h("table", { class: "table table-compact" },
      h("thead", null, h("tr", null, h("th", { scope: "col" }, "Interval"), h("th", { scope: "col" }, "Covers"))),
      h("tbody", null, rows.map((p) => h("tr", null, h("th", { scope: "row" }, fmtPercent(p.nominal)), h("td", null, fmtPercent(p.observed, 1))))));
  } else if (coverage && typeof coverage === "object") {
    table = keyValues(Object.entries(coverage));
  }
  return card("Calibration of the intervals",
    h("p", { class: "muted" }, "On held-out test ratings: how often an interval of each nominal level really contained the rating. On the diagonal = honest intervals."),
    h("div", { class: "split" }, rows.length ? figure(calibrationChart(rows), "nominal vs observed coverage") : empty("No calibration recorded."), table));
}

function metricsPanel(meta) {
  const metrics = meta.test_metrics && typeof meta.test_metrics === "object" ? meta.test_metrics : {};
  const baselines = meta.baselines && typeof meta.baselines === "object" ? meta.baselines : {};
  const scalar = Object.entries(metrics).filter(([, v]) => isNum(v));
  const baseNames = Object.keys(baselines).filter((b) => baselines[b] && typeof baselines[b] === "object");
  if (!scalar.length) return card("Accuracy on the test split", empty("No test metrics recorded."));
  return card("Accuracy on the test split",
    h("table", { class: "table" },
      h("thead", null, h("tr", null, h("th", { scope: "col" }, "Metric"), h("th", { scope: "col" }, "BPMF"),
        baseNames.map((b) => h("th", { scope: "col" }, humanise(b))))),
      h("tbody", null, scalar.map(([k, v]) => h("tr", null,
        h("th", { scope: "row" }, k.toUpperCase().length <= 5 ? k.toUpperCase() : humanise(k)),
        h("td", null, fmt(v, 3)),
        baseNames.map((b) => h("td", null, fmt(baselines[b][k], 3))))))));
}

function dataPanel(meta) {
  const dist = meta.rating_distribution && typeof meta.rating_distribution === "object" ? meta.rating_distribution : null;
  // Explicit ratings 1-10 as bars; the implicit 0s (often the majority) would flatten them.
  const entries = dist ? Object.keys(dist).filter((k) => k !== "0").sort((a, b) => Number(a) - Number(b)).map((k) => [k, Number(dist[k])]) : [];
  const implicit = dist ? Number(dist["0"]) : NaN;
  const tiers = meta.coverage_by_tier && typeof meta.coverage_by_tier === "object" ? meta.coverage_by_tier : null;
  return wide(card("Data and coverage",
    h("div", { class: "split" },
      entries.length
        ? figure(barChart(entries, { xLabel: "rating", label: `Explicit ratings by value: ${entries.map(([k, v]) => `${k}: ${v}`).join(", ")}` }),
          `Explicit ratings by value${isNum(implicit) ? `, besides ${fmtInt(implicit)} implicit interactions (rating 0)` : ""}`)
        : empty("No rating distribution recorded."),
      h("div", null, h("h3", { class: "sub-title" }, "Dataset"), keyValues(Object.entries(meta.dataset || {})))),
    tiers
      ? h("div", null, h("h3", { class: "sub-title" }, "Readers served, by basis"), stackedShare(Object.entries(tiers), { label: "Readers by basis" }))
      : null));
}

function trainingPanel(meta) {
  const params = meta.parameters && typeof meta.parameters === "object" ? meta.parameters : {};
  const stages = meta.stage_seconds && typeof meta.stage_seconds === "object" ? meta.stage_seconds : {};
  return card("Training run",
    h("dl", { class: "facts facts-grid" },
      [["Version", meta.version], ["Published", fmtDate(meta.created_at)], ["Environment", meta.environment],
        ["Code version", meta.code_version], ["Training time", fmtSeconds(meta.training_time_seconds)],
        ["Samples / burn-in", `${fmt(meta.n_samples)} / ${fmt(meta.burn_in)}`], ["Chains", fmt(meta.n_chains)],
        ["Thinning", fmt(meta.thin)], ["Kept draws", fmt(meta.n_kept)], ["Stored top-N", fmt(meta.top_n)],
        ["Interval level", fmtPercent(meta.interval_level)]]
        .map(([k, v]) => [h("dt", null, k), h("dd", null, v === undefined || v === null ? "—" : String(v))])),
    Object.keys(params).length ? h("div", null, h("h3", { class: "sub-title" }, "Parameters"), keyValues(Object.entries(params))) : null,
    Object.keys(stages).length ? h("div", null, h("h3", { class: "sub-title" }, "Time per stage"),
      keyValues(Object.entries(stages).map(([k, v]) => [k, fmtSeconds(v)]))) : null);
}

export function createModelView() {
  const body = h("div", { class: "model-body", "aria-live": "polite" });
  const refresh = h("button", { type: "button", class: "button button-quiet" }, "Refresh");
  let loaded = false;
  let controller = null;

  async function load() {
    if (controller) controller.abort();
    controller = new AbortController();
    clear(body).append(loading("Loading the model report…"));
    try {
      const meta = await api.modelInfo(controller.signal);
      if (isNum(meta.interval_level)) state.intervalLevel = meta.interval_level;
      loaded = true;
      clear(body).append(trainingPanel(meta), convergencePanel(meta), tracesPanel(meta), calibrationPanel(meta), metricsPanel(meta), dataPanel(meta));
    } catch (err) {
      if (err.name === "AbortError") return;
      const title = err.status === 503 || err.status === 404 ? "No model published yet" : "Couldn't load the model report";
      clear(body).append(errorBox(err, { title, retry: load }));
    }
  }

  refresh.addEventListener("click", load);
  const root = h("div", { class: "view view-model" },
    h("div", { class: "inline view-head" }, h("p", { class: "intro" }, "Should you trust the model? These are the checks."), refresh),
    body);
  return {
    root,
    show() { if (!loaded) load(); },
  };
}
