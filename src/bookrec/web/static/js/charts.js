// Plain SVG charts drawn by small functions: no chart library, no network.
// Every chart gets role="img" and an aria-label that says what it shows in words.

import { s, h, isNum, fmt, fmtCompact, fmtInt } from "./dom.js";

const RATING_MIN = 1;
const RATING_MAX = 10;
export const CHAIN_COLOURS = ["#2f6f8f", "#c2693e", "#5d8a4e", "#8a5a9e", "#b8943a", "#4e7f8a", "#a34e5e", "#6b6b6b"];

function linear(domainLo, domainHi, rangeLo, rangeHi) {
  const span = domainHi - domainLo || 1;
  return (v) => rangeLo + ((v - domainLo) / span) * (rangeHi - rangeLo);
}

function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

/** Round tick values covering [lo, hi] (about `count` of them). */
export function niceTicks(lo, hi, count = 4) {
  if (!isNum(lo) || !isNum(hi)) return [];
  if (lo === hi) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => raw <= st) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function tickLabel(v) {
  if (Math.abs(v) >= 1000) return fmtCompact(v);
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) < 0.01 ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

/**
 * The numbers of a bar's scale, as HTML under it: the bar's SVG shrinks with its card, and text
 * drawn inside it would shrink with it to an unreadable size. `x` maps a value to the SVG's x and
 * `W` is the SVG's width (its viewBox), so each number sits under its tick at any rendered size.
 */
function scaleNumbers(values, x, W) {
  return h("div", { class: "scale-numbers", "aria-hidden": "true" },
    values.map((v) => h("span", { vars: { "--at": `${((x(v) / W) * 100).toFixed(3)}%` } }, tickLabel(v))));
}

/**
 * The credible interval of one prediction on the 1-10 rating axis: a bar from lower to upper
 * with a dot at the predicted rating, over the numbers 1 to 10. Numbers are repeated in the
 * aria-label for screen readers.
 */
export function intervalBar(mean, interval, { level = 0.9 } = {}) {
  const W = 240;
  const H = 22;
  const x = linear(RATING_MIN, RATING_MAX, 10, W - 10);
  const [lo, hi] = Array.isArray(interval) ? interval : [null, null];
  const pct = Math.round(level * 100);
  const label = isNum(lo) && isNum(hi)
    ? `Predicted rating ${fmt(mean, 1)}, ${pct}% credible interval ${fmt(lo, 1)} to ${fmt(hi, 1)} on a 1 to 10 scale`
    : `Predicted rating ${fmt(mean, 1)} on a 1 to 10 scale`;
  const svg = s("svg", { class: "interval-bar", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  svg.append(s("title", { text: label }));
  svg.append(s("line", { class: "axis", x1: x(RATING_MIN), x2: x(RATING_MAX), y1: 12, y2: 12 }));
  const values = Array.from({ length: RATING_MAX - RATING_MIN + 1 }, (_, i) => RATING_MIN + i);
  for (const v of values) svg.append(s("line", { class: "tick", x1: x(v), x2: x(v), y1: 9, y2: 15 }));
  if (isNum(lo) && isNum(hi)) {
    const a = x(clamp(lo, RATING_MIN, RATING_MAX));
    const b = x(clamp(hi, RATING_MIN, RATING_MAX));
    svg.append(s("rect", { class: "interval", x: a, y: 7, width: Math.max(2, b - a), height: 10, rx: 5 }));
  }
  if (isNum(mean)) {
    svg.append(s("circle", { class: "point", cx: x(clamp(mean, RATING_MIN, RATING_MAX)), cy: 12, r: 5 }));
  }
  return h("div", { class: "interval-figure" }, svg, scaleNumbers(values, x, W));
}

/** Similarity (cosine of posterior book factors) with +/- 2 sd whiskers on a -1..1 axis. */
export function similarityBar(similarity, sd) {
  const W = 200;
  const H = 30;
  const x = linear(-1, 1, 8, W - 8);
  const label = `Similarity ${fmt(similarity, 2)}${isNum(sd) ? `, plus or minus ${fmt(2 * sd, 2)} (2 standard deviations)` : ""} on a -1 to 1 scale`;
  const svg = s("svg", { class: "similarity-bar", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  svg.append(s("title", { text: label }));
  svg.append(s("line", { class: "axis", x1: x(-1), x2: x(1), y1: 11, y2: 11 }));
  for (const v of [-1, -0.5, 0, 0.5, 1]) {
    svg.append(s("line", { class: "tick", x1: x(v), x2: x(v), y1: 8, y2: 14 }));
    svg.append(s("text", { class: "tick-label", x: x(v), y: 27, "text-anchor": "middle", text: v }));
  }
  if (isNum(similarity)) {
    if (isNum(sd) && sd > 0) {
      const a = x(clamp(similarity - 2 * sd, -1, 1));
      const b = x(clamp(similarity + 2 * sd, -1, 1));
      svg.append(s("rect", { class: "interval", x: a, y: 6, width: Math.max(2, b - a), height: 10, rx: 5 }));
    }
    svg.append(s("circle", { class: "point", cx: x(clamp(similarity, -1, 1)), cy: 11, r: 4.5 }));
  }
  return svg;
}

function frame(W, H, label, cls) {
  const svg = s("svg", { class: `chart ${cls || ""}`.trim(), viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  svg.append(s("title", { text: label }));
  return svg;
}

function yAxis(svg, ticks, y, x0, x1) {
  for (const t of ticks) {
    svg.append(s("line", { class: "grid", x1: x0, x2: x1, y1: y(t), y2: y(t) }));
    svg.append(s("text", { class: "tick-label", x: x0 - 6, y: y(t) + 3, "text-anchor": "end", text: tickLabel(t) }));
  }
}

/** Sampled values of one parameter, one line per chain: good mixing looks like overlapping noise. */
export function traceChart(name, chains) {
  const W = 340;
  const H = 170;
  const m = { l: 46, r: 10, t: 12, b: 26 };
  const series = (Array.isArray(chains) ? chains : []).map((c) => (Array.isArray(c) ? c.filter(isNum) : []));
  const all = series.flat();
  const n = Math.max(0, ...series.map((c) => c.length));
  const label = `Trace of ${name}: ${series.length} chain${series.length === 1 ? "" : "s"}, ${n} draws each`;
  const svg = frame(W, H, label, "trace-chart");
  if (!all.length) return svg;
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  const pad = (hi - lo) * 0.06 || Math.abs(hi) * 0.05 || 1;
  lo -= pad;
  hi += pad;
  const x = linear(0, Math.max(1, n - 1), m.l, W - m.r);
  const y = linear(lo, hi, H - m.b, m.t);
  yAxis(svg, niceTicks(lo, hi, 4), y, m.l, W - m.r);
  for (const t of niceTicks(0, Math.max(1, n - 1), 4)) {
    svg.append(s("text", { class: "tick-label", x: x(t), y: H - m.b + 16, "text-anchor": "middle", text: tickLabel(t) }));
  }
  series.forEach((c, k) => {
    if (!c.length) return;
    const d = c.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join("");
    svg.append(s("path", { class: "series", d, stroke: CHAIN_COLOURS[k % CHAIN_COLOURS.length], "data-chain": k }));
  });
  svg.append(s("text", { class: "axis-label", x: W - m.r, y: H - 2, "text-anchor": "end", text: "draw" }));
  return svg;
}

/** Nominal vs observed coverage of the credible intervals; the diagonal is perfect calibration. */
export function calibrationChart(points) {
  const W = 250;
  const H = 240;
  const m = { l: 40, r: 12, t: 12, b: 38 };
  const pts = (Array.isArray(points) ? points : [])
    .filter((p) => p && isNum(p.nominal) && isNum(p.observed))
    .sort((a, b) => a.nominal - b.nominal);
  const label = `Calibration: ${pts.map((p) => `${Math.round(p.nominal * 100)}% intervals cover ${Math.round(p.observed * 100)}%`).join(", ") || "no data"}`;
  const svg = frame(W, H, label, "calibration-chart");
  const x = linear(0, 1, m.l, W - m.r);
  const y = linear(0, 1, H - m.b, m.t);
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  yAxis(svg, ticks, y, m.l, W - m.r);
  for (const t of ticks) {
    svg.append(s("text", { class: "tick-label", x: x(t), y: H - m.b + 16, "text-anchor": "middle", text: t }));
  }
  svg.append(s("path", { class: "diagonal", d: `M${x(0)},${y(0)}L${x(1)},${y(1)}` }));
  if (pts.length) {
    const d = pts.map((p, i) => `${i ? "L" : "M"}${x(p.nominal).toFixed(1)},${y(p.observed).toFixed(1)}`).join("");
    svg.append(s("path", { class: "series calibration-line", d }));
    for (const p of pts) {
      svg.append(
        s("circle", { class: "point", cx: x(p.nominal), cy: y(p.observed), r: 4 },
          s("title", { text: `nominal ${fmt(p.nominal, 2)}, observed ${fmt(p.observed, 3)}` })),
      );
    }
  }
  svg.append(s("text", { class: "axis-label", x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle", text: "nominal coverage" }));
  svg.append(s("text", { class: "axis-label", x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})`, text: "observed" }));
  return svg;
}

/** Vertical bars for labelled counts; `highlight(label)` picks a second colour (e.g. implicit 0s). */
export function barChart(entries, { label, highlight = () => false, xLabel = "" } = {}) {
  const W = 360;
  const H = 200;
  const m = { l: 46, r: 8, t: 12, b: xLabel ? 40 : 26 };
  const data = entries.filter(([, v]) => isNum(v));
  const svg = frame(W, H, label || data.map(([k, v]) => `${k}: ${fmtInt(v)}`).join(", "), "bar-chart");
  if (!data.length) return svg;
  const max = Math.max(...data.map(([, v]) => v), 1);
  const y = linear(0, max, H - m.b, m.t);
  yAxis(svg, niceTicks(0, max, 4), y, m.l, W - m.r);
  const band = (W - m.l - m.r) / data.length;
  data.forEach(([k, v], i) => {
    const x0 = m.l + i * band + band * 0.14;
    const bar = s("rect", {
      class: highlight(k) ? "bar bar-alt" : "bar",
      x: x0, y: y(v), width: band * 0.72, height: Math.max(0, y(0) - y(v)), rx: 2,
    }, s("title", { text: `${k}: ${fmtInt(v)}` }));
    svg.append(bar);
    svg.append(s("text", { class: "tick-label", x: x0 + band * 0.36, y: H - m.b + 14, "text-anchor": "middle", text: k }));
  });
  if (xLabel) svg.append(s("text", { class: "axis-label", x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle", text: xLabel }));
  return svg;
}

/** One horizontal stacked bar (shares of a whole) plus an HTML legend with counts. */
export function stackedShare(entries, { label, classPrefix = "tier" } = {}) {
  const data = entries.filter(([, v]) => isNum(v) && v >= 0);
  const total = data.reduce((acc, [, v]) => acc + v, 0);
  const W = 360;
  const H = 26;
  const words = data.map(([k, v]) => `${k}: ${fmtInt(v)}${total ? ` (${Math.round((v / total) * 100)}%)` : ""}`).join(", ");
  const svg = frame(W, H, label ? `${label}: ${words}` : words, "stacked-chart");
  svg.setAttribute("preserveAspectRatio", "none");
  let x0 = 0;
  for (const [k, v] of data) {
    const w = total ? (v / total) * W : 0;
    if (w > 0) svg.append(s("rect", { class: `seg ${classPrefix}-${k}`, x: x0, y: 0, width: w, height: H }, s("title", { text: `${k}: ${fmtInt(v)}` })));
    x0 += w;
  }
  const legend = h("ul", { class: "legend" },
    data.map(([k, v]) => h("li", null,
      h("span", { class: `swatch ${classPrefix}-${k}`, "aria-hidden": "true" }),
      `${k.replace(/_/g, " ")}: ${fmtInt(v)}${total ? ` (${((v / total) * 100).toFixed(1)}%)` : ""}`)));
  return h("div", { class: "stacked" }, svg, legend);
}

/**
 * P(liked): the chance the reader rates the book at or above the liked threshold, as a small
 * meter (a filled share of a bar) with the percentage beside it.
 */
export function likedMeter(p, { threshold = null } = {}) {
  const W = 64;
  const H = 12;
  const ok = isNum(p);
  const pct = ok ? Math.round(clamp(p, 0, 1) * 100) : null;
  const label = ok
    ? `${pct}% chance of liking it${isNum(threshold) ? ` (a rating of ${fmt(threshold, 1)} or more)` : ""}`
    : "Chance of liking it not known";
  const svg = s("svg", { class: "liked-meter", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  svg.append(s("title", { text: label }));
  svg.append(s("rect", { class: "track", x: 0, y: 2, width: W, height: H - 4, rx: (H - 4) / 2 }));
  if (ok && pct > 0) svg.append(s("rect", { class: "fill", x: 0, y: 2, width: Math.max(H - 4, (W * pct) / 100), height: H - 4, rx: (H - 4) / 2 }));
  return svg;
}

/**
 * A read-together weight (how much reading one book raises another) with +/- 2 sd whiskers, on
 * an axis from 0 to `max` (the largest value shown in the list, so the bars compare).
 */
export function weightBar(weight, sd, { max = null } = {}) {
  const W = 200;
  const H = 30;
  const top = isNum(max) && max > 0 ? max : Math.max(isNum(weight) ? weight + 2 * (isNum(sd) ? sd : 0) : 0, 1e-6);
  const x = linear(0, top, 8, W - 8);
  const label = `Read-together weight ${fmt(weight, 3)}${isNum(sd) ? `, plus or minus ${fmt(2 * sd, 3)} (2 standard deviations)` : ""}`;
  const svg = s("svg", { class: "similarity-bar weight-bar", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  svg.append(s("title", { text: label }));
  svg.append(s("line", { class: "axis", x1: x(0), x2: x(top), y1: 11, y2: 11 }));
  for (const v of niceTicks(0, top, 3)) {
    svg.append(s("line", { class: "tick", x1: x(v), x2: x(v), y1: 8, y2: 14 }));
    svg.append(s("text", { class: "tick-label", x: x(v), y: 27, "text-anchor": "middle", text: tickLabel(v) }));
  }
  if (isNum(weight)) {
    if (isNum(sd) && sd > 0) {
      const a = x(clamp(weight - 2 * sd, 0, top));
      const b = x(clamp(weight + 2 * sd, 0, top));
      svg.append(s("rect", { class: "interval", x: a, y: 6, width: Math.max(2, b - a), height: 10, rx: 5 }));
    }
    svg.append(s("circle", { class: "point", cx: x(clamp(weight, 0, top)), cy: 11, r: 4.5 }));
  }
  return svg;
}

/**
 * Horizontal bars, one per model (e.g. recall@10), with +/- `se` whiskers where given;
 * `highlight(row)` draws a bar in the accent colour (our models), the others in grey.
 * Each model's name sits above its bar, across the chart's full width, so that a long name
 * ("Predicted rating over every work (BPMF)") needs no margin sized for it and is never cut off.
 */
export function modelBars(rows, { label, highlight = () => false, digits = 3 } = {}) {
  const data = rows.filter((r) => r && isNum(r.value));
  const m = { l: 8, r: 46, t: 4, b: 22 };
  const band = 32; // a row: the name (10 units tall), then the bar
  const W = 420;
  const H = m.t + m.b + band * Math.max(data.length, 1);
  const words = data.map((r) => `${r.name}: ${fmt(r.value, digits)}`).join(", ");
  const svg = frame(W, H, label ? `${label}: ${words}` : words, "model-bars");
  if (!data.length) return svg;
  const hi = Math.max(...data.map((r) => r.value + (isNum(r.se) ? r.se : 0)), 1e-9);
  const x = linear(0, hi, m.l, W - m.r);
  for (const t of niceTicks(0, hi, 4)) {
    svg.append(s("line", { class: "grid", x1: x(t), x2: x(t), y1: m.t, y2: H - m.b }));
    svg.append(s("text", { class: "tick-label", x: x(t), y: H - m.b + 14, "text-anchor": "middle", text: tickLabel(t) }));
  }
  data.forEach((r, i) => {
    const y0 = m.t + i * band;
    const barY = y0 + 15;
    const barH = 12;
    const ours = highlight(r);
    svg.append(s("text", { class: `bar-label${ours ? " bar-label-ours" : ""}`, x: m.l, y: y0 + 11, text: r.name }));
    svg.append(s("rect", {
      class: ours ? "bar" : "bar bar-alt", x: x(0), y: barY, width: Math.max(0, x(r.value) - x(0)), height: barH, rx: 2,
    }, s("title", { text: `${r.name}: ${fmt(r.value, digits)}${isNum(r.se) ? ` ± ${fmt(r.se, digits)}` : ""}` })));
    if (isNum(r.se) && r.se > 0) {
      svg.append(s("line", { class: "whisker", x1: x(Math.max(0, r.value - r.se)), x2: x(r.value + r.se), y1: barY + barH / 2, y2: barY + barH / 2 }));
    }
    svg.append(s("text", { class: "tick-label bar-value", x: x(r.value + (isNum(r.se) ? r.se : 0)) + 4, y: barY + barH / 2 + 3, text: fmt(r.value, digits) }));
  });
  return svg;
}
