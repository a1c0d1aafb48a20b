// Model view: the pictures that say whether to trust the model. Top-N ranking quality against
// baselines, MCMC traces per chain, R-hat / ESS, calibration of the intervals, data and coverage,
// training time and version.

import { h, clear, fmt, fmtInt, fmtSeconds, fmtDate, fmtPercent, humanise, isNum } from "../dom.js";
import { api } from "../api.js";
import { loading, empty, errorBox, scrollTable } from "../components.js";
import { traceChart, calibrationChart, barChart, stackedShare, modelBars, CHAIN_COLOURS } from "../charts.js";
import { state } from "../state.js";

// The model's own convergence rule (bookrec.model.diagnostics): every R-hat below 1.05 and every
// bulk and tail ESS at least 100, unless the published meta names other thresholds.
const RHAT_DEFAULT = 1.01;
const MIN_ESS_DEFAULT = 400;
// Per-prediction diagnostics (pred_0, pred_1, ...) are summarised in one row.
const PRED_PATTERN = /^pred_\d+$/;

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
  const rhatMax = isNum(conv.rhat_threshold) ? conv.rhat_threshold : RHAT_DEFAULT;
  const minEss = isNum(conv.min_ess) ? conv.min_ess : MIN_ESS_DEFAULT;
  const names = [...new Set([...Object.keys(rhat), ...Object.keys(bulk), ...Object.keys(tail)])];
  const preds = names.filter((n) => PRED_PATTERN.test(n));
  const params = names.filter((n) => !PRED_PATTERN.test(n));
  const failing = Array.isArray(conv.failing) ? [...new Set(conv.failing.map(String))] : null;
  const failingPreds = failing ? failing.filter((n) => PRED_PATTERN.test(n)).length : 0;
  const failingParams = failing ? failing.filter((n) => !PRED_PATTERN.test(n)) : [];

  const converged = conv.converged === true;
  let detail = "";
  if (conv.converged === undefined) detail = "";
  else if (converged) detail = `: every R-hat is below ${rhatMax} and every effective sample size is at least ${fmtInt(minEss)}, so the ${chains} chains agree.`;
  else {
    const parts = [...failingParams];
    if (failingPreds) parts.push(`${failingPreds} of ${preds.length} sampled predictions`);
    const slowest = typeof conv.summary === "string" && conv.summary ? ` ${conv.summary[0].toUpperCase()}${conv.summary.slice(1)}.` : "";
    // Every sampled prediction passing is what the published intervals rest on.
    const advice = failing && preds.length && !failingPreds
      ? `the ${preds.length} sampled predictions pass, so the predictions and their intervals can be used; the quantities named need longer chains for their own estimates.`
      : "treat the intervals with caution; more samples or a longer burn-in are needed.";
    detail = `${parts.length ? ` (${parts.join(", ")})` : ""}: ${advice}${slowest}`;
  }
  const verdict = h("p", { class: `verdict ${converged ? "verdict-ok" : "verdict-warn"}`, role: "status" },
    h("strong", null, conv.converged === undefined ? "No convergence check recorded" : converged ? "Chains converged" : "Chains have not converged"),
    detail);

  // R-hat to three decimals; an effective sample size is a count of draws.
  const cell = (v, good, format) => h("td", { class: isNum(v) ? (good(v) ? "ok" : "warn") : "" }, isNum(v) ? format(v) : "—");
  const rhatCell = (v) => cell(v, (x) => x < rhatMax, (x) => fmt(x, 3));
  const essCell = (v) => cell(v, (x) => x >= minEss, fmtInt);
  const rows = params.map((n) => h("tr", null, h("th", { scope: "row" }, n), rhatCell(rhat[n]), essCell(bulk[n]), essCell(tail[n])));
  if (preds.length) {
    const worst = (obj, pick) => {
      const values = preds.map((n) => obj[n]).filter(isNum);
      return values.length ? pick(...values) : null;
    };
    rows.push(h("tr", null,
      h("th", { scope: "row" }, `${preds.length} predictions (worst)`),
      rhatCell(worst(rhat, Math.max)), essCell(worst(bulk, Math.min)), essCell(worst(tail, Math.min))));
  }
  const table = rows.length
    ? h("table", { class: "table" },
      h("caption", { class: "muted" }, `Good: R-hat < ${rhatMax}, ESS ≥ ${fmtInt(minEss)} (over ${chains} chain${chains === 1 ? "" : "s"}).`),
      h("thead", null, h("tr", null, h("th", { scope: "col" }, "Quantity"), h("th", { scope: "col" }, "R-hat"), h("th", { scope: "col" }, "ESS bulk"), h("th", { scope: "col" }, "ESS tail"))),
      h("tbody", null, rows))
    : null;
  return card("Convergence", verdict, table ? scrollTable(table) : null);
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
    const widths = rows.some((p) => isNum(p.width));
    table = h("table", { class: "table table-compact" },
      h("thead", null, h("tr", null, h("th", { scope: "col" }, "Interval"), h("th", { scope: "col" }, "Covers"),
        widths ? h("th", { scope: "col" }, "Mean width") : null)),
      h("tbody", null, rows.map((p) => h("tr", null, h("th", { scope: "row" }, fmtPercent(p.nominal)), h("td", null, fmtPercent(p.observed, 1)),
        widths ? h("td", null, fmt(p.width, 2)) : null))));
  } else if (coverage && typeof coverage === "object") {
    table = keyValues(Object.entries(coverage));
  }
  return card("Calibration of the intervals",
    h("p", { class: "muted" }, "On held-out test ratings: how often an interval of each nominal level really contained the rating. On the diagonal = honest intervals."),
    h("div", { class: "split" }, rows.length ? figure(calibrationChart(rows), "nominal vs observed coverage") : empty("No calibration recorded."), table));
}

const METRIC_NAMES = { rmse: "RMSE", mae: "MAE", nll: "Log loss (NLL)", crps: "CRPS" };
// Counts that travel with the metrics; shown in the caption, not as rows.
const METRIC_COUNTS = new Set(["n", "ranking_users"]);
// Ranking figures of older versions (they only re-ordered held-out items): the ranking panel
// replaces them, so the rating-accuracy table leaves them out.
const OLD_RANKING_METRIC = /^(ndcg|precision|recall|map|mrr|hit)(@|_|$)/i;

function metricName(key) {
  if (METRIC_NAMES[key]) return METRIC_NAMES[key];
  return key.startsWith("ndcg") ? `nDCG${key.slice(4)}` : humanise(key);
}

function metricsPanel(meta) {
  const metrics = meta.test_metrics && typeof meta.test_metrics === "object" ? meta.test_metrics : {};
  const baselines = meta.baselines && typeof meta.baselines === "object" ? meta.baselines : {};
  const scalar = Object.entries(metrics).filter(([k, v]) => isNum(v) && !METRIC_COUNTS.has(k) && !OLD_RANKING_METRIC.test(k));
  const baseNames = Object.keys(baselines).filter((b) => baselines[b] && typeof baselines[b] === "object");
  if (!scalar.length) return card("Rating accuracy on the test split", empty("No test metrics recorded."));
  return card("Rating accuracy on the test split",
    scrollTable(h("table", { class: "table table-metrics" },
      h("caption", { class: "muted" }, `${isNum(metrics.n) ? `On ${fmtInt(metrics.n)} held-out ratings. ` : ""}Lower is better for RMSE, MAE, NLL and CRPS. Ranking quality is in “Top-N ranking” above.`),
      h("thead", null, h("tr", null, h("th", { scope: "col" }, "Metric"), h("th", { scope: "col" }, "BPMF"),
        baseNames.map((b) => h("th", { scope: "col" }, humanise(b))))),
      h("tbody", null, scalar.map(([k, v]) => h("tr", null,
        h("th", { scope: "row" }, metricName(k)),
        h("td", null, fmt(v, 3)),
        baseNames.map((b) => h("td", null, fmt(baselines[b][k], 3)))))))));
}

// ---- top-N ranking: our modes against baselines (meta.ranking) ---------------------------------

const RANKING_COLUMNS = [
  ["recall@10", "Recall@10", 3, "Share of each reader's held-out books found in their top 10"],
  ["ndcg@10", "NDCG@10", 3, "Like recall@10, with hits near the top counting more"],
  ["liked_recall@10", "Liked recall@10", 3, "Recall@10 of the held-out books the reader rated as liked"],
  ["mrr@10", "MRR@10", 3, "1 / rank of the first hit in the top 10"],
  ["distinct_works", "Distinct works", null, "How many different books appear in anyone's top 10"],
  ["top_work_share", "Top-work share", "%", "Share of readers whose top 10 holds the single most recommended book"],
  ["coverage", "Coverage", "%", "Share of the catalogue recommended to someone"],
  ["novelty", "Novelty", 0, "Mean popularity rank of the recommended books (1 = the most read; higher = less popular picks)"],
];

function rankingCell(row, key, digits) {
  const v = row[key];
  if (!isNum(v)) return h("td", null, "—");
  const text = digits === "%" ? fmtPercent(v, 1) : digits === null ? fmtInt(v) : fmt(v, digits);
  if (key === "recall@10" && isNum(row["recall@10_se"])) {
    return h("td", null, text, h("span", { class: "se muted" }, ` ± ${fmt(row["recall@10_se"], 3)}`));
  }
  return h("td", null, text);
}

function rankingPanel(ranking) {
  const raw = ranking && Array.isArray(ranking.rows) ? ranking.rows.filter((r) => r && typeof r === "object") : [];
  if (!raw.length) {
    return wide(card("Top-N ranking", empty("No top-N evaluation was recorded for this version.")));
  }
  // The default ranking first (the paired standard errors are relative to it), then as published.
  const first = raw.findIndex((r) => r.model === "for_you");
  const rows = first > 0 ? [raw[first], ...raw.filter((_, i) => i !== first)] : raw;
  const nameOf = (r) => String(r.label || r.model || "?");
  const ours = (r) => r.kind === "ours";
  const k = isNum(ranking.k) ? ranking.k : 10;
  const table = h("table", { class: "table table-ranking" },
    h("thead", null, h("tr", null,
      h("th", { scope: "col" }, "Model"),
      RANKING_COLUMNS.map(([, label, , help]) => h("th", { scope: "col", title: help }, label)))),
    h("tbody", null, rows.map((r) => h("tr", { class: ours(r) ? "row-ours" : "row-baseline", "data-model": String(r.model || "") },
      h("th", { scope: "row" }, nameOf(r), ours(r) ? h("span", { class: "badge badge-ours" }, "ours") : null),
      RANKING_COLUMNS.map(([key, , digits]) => rankingCell(r, key, digits))))));
  const chart = modelBars(rows.map((r) => ({ name: nameOf(r), value: r["recall@10"], se: r["recall@10_se"], ours: ours(r) })), {
    label: `Recall@${k} per model`, highlight: (r) => r.ours,
  });
  const threshold = isNum(ranking.liked_threshold) ? fmt(ranking.liked_threshold, 1) : null;
  const counts = [
    isNum(ranking.n_readers) ? `${fmtInt(ranking.n_readers)} readers` : null,
    isNum(ranking.n_held_out) ? `${fmtInt(ranking.n_held_out)} held-out books` : null,
    isNum(ranking.n_liked) ? `${fmtInt(ranking.n_liked)} of them liked` : null,
  ].filter(Boolean).join(", ");
  const caption = h("div", { class: "ranking-caption muted" },
    h("p", null,
      `How well each model puts the books a reader really went on to read into their top ${k}. `,
      "A share of each evaluated reader's interactions (rated or not) was held out; every work the reader had not touched was ranked, and a hit is a held-out book in the top ",
      `${k}. “Liked” counts only held-out books the reader rated ${threshold ? `${threshold} or more` : "highly"}. `,
      "± is the paired standard error of the difference to the first row, over readers. Our rankings are highlighted."),
    counts ? h("p", null, `Evaluated on ${counts}.`) : null,
    typeof ranking.protocol === "string" && ranking.protocol ? h("p", { class: "protocol" }, `Protocol: ${ranking.protocol}`) : null);
  return wide(card("Top-N ranking",
    scrollTable(table),
    h("div", { class: "split" }, figure(chart, `Recall@${k} per model (higher is better; whiskers: ± paired SE)`), caption)));
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
  const sources = meta.parameter_sources && typeof meta.parameter_sources === "object" ? meta.parameter_sources : {};
  const ratingModel = meta.rating_model && typeof meta.rating_model === "object" ? meta.rating_model : {};
  const paramRows = Object.entries(params)
    .filter(([, v]) => v !== null && v !== undefined && typeof v !== "object")
    .map(([k, v]) => [h("dt", null, humanise(k)), h("dd", null, fmt(v), sources[k] ? h("span", { class: "muted" }, ` · ${sources[k]}`) : null)]);
  const stages = meta.stage_seconds && typeof meta.stage_seconds === "object" ? meta.stage_seconds : {};
  return card("Training run",
    h("dl", { class: "facts facts-grid" },
      [["Version", meta.version], ["Published", fmtDate(meta.created_at)], ["Environment", meta.environment],
        ["Tuned parameters", meta.tuned === undefined ? null : meta.tuned ? "yes (bookrec optimize)" : "no"],
        ["Code version", meta.code_version], ["Training time", fmtSeconds(meta.training_time_seconds)],
        ["Samples / burn-in", `${fmt(meta.n_samples)} / ${fmt(meta.burn_in)}`], ["Chains", fmt(meta.n_chains)],
        ["Thinning", fmt(meta.thin)], ["Kept draws", fmt(meta.n_kept)], ["Stored top-N", fmt(meta.top_n)],
        ["Interval level", fmtPercent(meta.interval_level)]]
        .map(([k, v]) => [h("dt", null, k), h("dd", null, v === undefined || v === null ? "—" : String(v))])),
    paramRows.length ? h("div", null, h("h3", { class: "sub-title" }, "Parameters"), h("dl", { class: "facts facts-grid" }, paramRows)) : null,
    Object.keys(ratingModel).length ? h("div", null, h("h3", { class: "sub-title" }, "Rating model"), keyValues(Object.entries(ratingModel))) : null,
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
      const meta = await api.modelInfo({ signal: controller.signal });
      if (isNum(meta.interval_level)) state.intervalLevel = meta.interval_level;
      loaded = true;
      const ranking = meta.ranking && typeof meta.ranking === "object" ? meta.ranking : null;
      if (ranking && isNum(ranking.liked_threshold)) state.likedThreshold = ranking.liked_threshold;
      clear(body).append(rankingPanel(ranking), trainingPanel(meta), convergencePanel(meta), tracesPanel(meta), calibrationPanel(meta), metricsPanel(meta), dataPanel(meta));
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
