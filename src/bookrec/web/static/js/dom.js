// Small DOM helpers. Everything that comes from data goes in through textContent or
// setAttribute, never through the HTML parser: a title like "<script>" must stay text.

const SVG_NS = "http://www.w3.org/2000/svg";

function applyProps(node, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "vars") {
      // CSS custom properties through the CSSOM (allowed by a strict style-src CSP).
      for (const [name, v] of Object.entries(value)) node.style.setProperty(name, String(v));
    } else if (key === "value" || key === "checked" || key === "disabled" || key === "selected") {
      node[key] = value;
    } else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Create an HTML element: h("p", {class: "x"}, "text", otherNode). */
export function h(tag, props, ...children) {
  const node = document.createElement(tag);
  applyProps(node, props);
  return append(node, children);
}

/** Create an SVG element (attributes only; text children become text nodes). */
export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, String(value));
  }
  return append(node, children);
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

// ---- formatting: never print "undefined" or "NaN" -------------------------------------

export const DASH = "—";

export function isNum(x) {
  return typeof x === "number" && Number.isFinite(x);
}

/** A value as text; numbers get `digits` decimals (without `digits`: whole numbers stay whole). */
export function fmt(x, digits) {
  if (x === undefined || x === null || x === "") return DASH;
  if (typeof x === "number") {
    if (!Number.isFinite(x)) return DASH;
    if (digits === undefined) return Number.isInteger(x) ? String(x) : x.toFixed(2);
    return x.toFixed(digits);
  }
  if (typeof x === "boolean") return x ? "yes" : "no";
  return String(x);
}

const intFormat = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
const compactFormat = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });

export function fmtInt(x) {
  return isNum(x) ? intFormat.format(x) : DASH;
}

export function fmtCompact(x) {
  return isNum(x) ? compactFormat.format(x) : DASH;
}

export function fmtPercent(x, digits = 0) {
  return isNum(x) ? `${(x * 100).toFixed(digits)}%` : DASH;
}

export function fmtSeconds(sec) {
  if (!isNum(sec)) return DASH;
  if (sec < 1) return `${Math.round(sec * 1000)} ms`;
  if (sec < 60) return `${sec.toFixed(1)} s`;
  const m = Math.floor(sec / 60);
  const rest = Math.round(sec - m * 60);
  if (m < 60) return `${m} min ${rest} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function fmtDate(value) {
  if (!value) return DASH;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleString();
}

/** "train_size" -> "Train size", "ndcg@10" stays readable. */
export function humanise(key) {
  const text = String(key).replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** A stable hue for a string (used by cover placeholders). */
export function hueOf(text) {
  let hash = 0;
  for (const ch of String(text)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  // A handful of calm hues (slate blue, teal, sage, ochre, terracotta, plum) rather than the full wheel.
  const hues = [205, 185, 150, 95, 40, 18, 345, 280, 225];
  return hues[hash % hues.length];
}

export function initials(title) {
  const words = String(title || "?")
    .replace(/[^\p{L}\p{N}\s]/gu, " ")
    .split(/\s+/)
    .filter(Boolean);
  const picked = words.filter((w) => !/^(the|a|an|of|and|le|la|der|die|das)$/i.test(w));
  const source = picked.length ? picked : words;
  return source.slice(0, 2).map((w) => w.charAt(0).toUpperCase()).join("") || "?";
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
