// Pieces shared by the views: status messages, covers, basis badges, recommendation cards
// (with the reason each book is there), and the type-ahead book search (a WAI-ARIA combobox).

import { h, fmt, isNum, hueOf, initials, debounce, DASH } from "./dom.js";
import { intervalBar, likedMeter } from "./charts.js";
import { api } from "./api.js";
import { state } from "./state.js";

// ---- status: loading, empty, error --------------------------------------------------

export function loading(text = "Loading…") {
  return h("div", { class: "status status-loading", role: "status", "aria-live": "polite" },
    h("span", { class: "spinner", "aria-hidden": "true" }), text);
}

export function empty(text) {
  return h("div", { class: "status status-empty", role: "status" }, text);
}

/** An error as a message box; `message` replaces the API's wording where the page knows better. */
export function errorBox(err, { title = "Something went wrong", message: own = null, retry } = {}) {
  const message = own || (err && err.name === "ApiError" ? err.message : "Something unexpected happened. Please try again.");
  if (!(err && err.name === "ApiError")) console.warn(err); // keep the details for developers only
  return h("div", { class: "status status-error", role: "alert" },
    h("strong", { class: "status-title" }, title),
    h("p", { class: "status-message" }, message),
    retry ? h("button", { type: "button", class: "button button-quiet", onclick: retry }, "Try again") : null);
}

// ---- wide tables ---------------------------------------------------------------------------

/**
 * A table in a box that scrolls sideways when the screen is narrower than the table, with a fade
 * on each edge that has columns past it: a scrollbar alone is easy to miss, and phones hide it.
 */
export function scrollTable(table) {
  const box = h("div", { class: "table-scroll" }, table);
  const frame = h("div", { class: "table-scroll-frame" }, box);
  const update = () => {
    const hidden = box.scrollWidth - box.clientWidth;
    frame.classList.toggle("more-left", box.scrollLeft > 1);
    frame.classList.toggle("more-right", box.scrollLeft < hidden - 1);
  };
  box.addEventListener("scroll", update, { passive: true });
  // Sizes change when the view is first shown and when the window is resized or turned.
  const observer = new ResizeObserver(update);
  observer.observe(box);
  observer.observe(table);
  return frame;
}

// ---- covers -----------------------------------------------------------------------------

function placeholder(title) {
  return h("div", { class: "cover cover-placeholder", "aria-hidden": "true", vars: { "--hue": hueOf(title) } },
    h("span", null, initials(title)));
}

function safeImageUrl(url) {
  if (typeof url !== "string" || !url) return null;
  try {
    const parsed = new URL(url, document.baseURI);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/** The cover image, replaced by a coloured tile with initials when the URL is dead. */
export function cover(item, size = "") {
  const src = safeImageUrl(item && item.image_url);
  const title = (item && item.title) || "";
  const box = h("div", { class: `cover-box ${size}`.trim() });
  if (!src) {
    box.append(placeholder(title));
    return box;
  }
  const img = h("img", { class: "cover", alt: "", decoding: "async", referrerpolicy: "no-referrer" });
  const fallBack = () => {
    if (img.isConnected || img.parentNode) img.replaceWith(placeholder(title));
  };
  img.addEventListener("error", fallBack, { once: true });
  // Some image hosts answer a dead link with a 1x1 pixel instead of an error.
  img.addEventListener("load", () => { if (img.naturalWidth <= 1) fallBack(); }, { once: true });
  img.src = src;
  box.append(img);
  return box;
}

// ---- basis badges -----------------------------------------------------------------------

const BASIS = {
  personal: ["personal", "From this reader's own reading and ratings in the trained models"],
  folded_in: ["folded-in", "From what this reader read, with their ratings folded into the trained model without retraining"],
  similar_reading: ["similar reading", "From books this reader read, through what readers read together; ratings from each book's own record"],
  popular: ["popular", "Popular books: too little is known about this reader"],
};

export function basisBadge(basis) {
  const [text, help] = BASIS[basis] || [basis ? String(basis).replace(/_/g, " ") : "unknown", "How this recommendation was made"];
  return h("span", { class: `badge basis basis-${BASIS[basis] ? basis : "other"}`, title: help }, text);
}

// ---- a recommendation / book card --------------------------------------------------------

export function bookLink(isbn, text) {
  if (!isbn) return h("span", null, text);
  return h("a", { href: `#/book/${encodeURIComponent(isbn)}` }, text);
}

function byline(item) {
  const parts = [];
  if (item.author) parts.push(item.author);
  if (isNum(item.year) && item.year > 0) parts.push(String(item.year));
  return parts.join(" · ") || DASH;
}

/**
 * Why a book is recommended: "Because you read <title>" (a link to that book), "Popular with
 * readers in usa aged 25-34", or "Popular". Nothing when the item carries no reason.
 */
export function reasonLine(reason) {
  if (!reason || typeof reason !== "object") return null;
  if (reason.kind === "because_you_read") {
    const title = typeof reason.title === "string" && reason.title ? reason.title : reason.isbn;
    if (!title) return null;
    return h("p", { class: "reason reason-read" }, "Because you read ", bookLink(reason.isbn, title));
  }
  if (reason.kind === "popular_in_segment" && typeof reason.segment === "string" && reason.segment) {
    return h("p", { class: "reason reason-segment" }, `Popular with ${reason.segment}`);
  }
  if (reason.kind === "popular" || reason.kind === "popular_in_segment") return h("p", { class: "reason reason-popular" }, "Popular");
  return null;
}

/** P(liked) of one book: a small meter and its percentage. */
function likedBlock(p) {
  if (!isNum(p)) return null;
  const threshold = state.likedThreshold;
  const help = isNum(threshold)
    ? `Chance this reader rates it ${fmt(threshold, 1)} or more, under the model's predictive distribution`
    : "Chance this reader likes it, under the model's predictive distribution";
  return h("div", { class: "liked", title: help },
    h("span", { class: "liked-value" }, `${Math.round(p * 100)}%`),
    likedMeter(p, { threshold }),
    h("span", { class: "liked-label" }, "likely to like"));
}

/** A card for one recommendation: rank, cover, title, author, year, prediction, interval, P(liked), reason, basis. */
export function recommendationCard(item, { level = 0.9, fallbackRank } = {}) {
  const rank = isNum(item.rank) ? item.rank : fallbackRank;
  const ci = Array.isArray(item.confidence_interval) ? item.confidence_interval : null;
  const pct = Math.round(level * 100);
  return h("li", { class: "card", "data-isbn": item.isbn || "" },
    h("span", { class: "rank", "aria-label": `Rank ${rank}` }, `${rank}`),
    cover(item),
    h("div", { class: "card-body" },
      h("h3", { class: "card-title" }, bookLink(item.isbn, item.title || "Untitled")),
      h("p", { class: "card-meta" }, byline(item)),
      h("div", { class: "card-rating" },
        h("span", { class: "predicted" }, h("span", { class: "predicted-value" }, fmt(item.predicted_rating, 1)), h("span", { class: "predicted-scale" }, " / 10")),
        ci ? h("span", { class: "ci-text" }, `${pct}% interval ${fmt(ci[0], 1)}–${fmt(ci[1], 1)}`) : null),
      h("div", { class: "card-figures" }, intervalBar(item.predicted_rating, ci, { level }), likedBlock(item.p_liked)),
      reasonLine(item.reason),
      h("div", { class: "card-foot" }, basisBadge(item.basis))));
}

export function cardList(items, opts = {}) {
  return h("ol", { class: "cards" }, items.map((item, i) => recommendationCard(item, { ...opts, fallbackRank: i + 1 })));
}

// ---- type-ahead search ----------------------------------------------------------------------

let comboboxCount = 0;

/**
 * A combobox that searches the whole catalogue through the API as you type (debounced; stale
 * answers are aborted). `onPick(book)` runs on Enter or click.
 */
export function bookSearch({ label, placeholder = "Title or author", onPick, limit = 8 }) {
  comboboxCount += 1;
  const id = `search-${comboboxCount}`;
  const input = h("input", {
    id, type: "search", class: "input", autocomplete: "off", spellcheck: "false",
    role: "combobox", "aria-autocomplete": "list", "aria-expanded": "false", "aria-controls": `${id}-list`,
    placeholder,
  });
  const list = h("ul", { id: `${id}-list`, class: "search-results", role: "listbox", "aria-label": "Matching books", hidden: true });
  const note = h("p", { class: "search-note", "aria-live": "polite" });
  let results = [];
  let active = -1;
  let controller = null;

  function close() {
    list.hidden = true;
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
    active = -1;
  }

  function setActive(i) {
    const options = list.querySelectorAll("[role=option]");
    options.forEach((o, k) => o.setAttribute("aria-selected", k === i ? "true" : "false"));
    active = i;
    if (i >= 0 && options[i]) {
      input.setAttribute("aria-activedescendant", options[i].id);
      options[i].scrollIntoView({ block: "nearest" });
    } else input.removeAttribute("aria-activedescendant");
  }

  function pick(i) {
    const book = results[i];
    if (!book) return;
    onPick(book);
    input.value = "";
    note.textContent = `Picked “${book.title || book.isbn}”.`;
    results = [];
    list.replaceChildren();
    close();
  }

  function show(found, query) {
    results = found;
    list.replaceChildren(
      ...found.map((book, i) => h("li", {
        id: `${id}-opt-${i}`, role: "option", class: "search-option", "aria-selected": "false",
        onmousedown: (ev) => { ev.preventDefault(); pick(i); },
      },
      cover(book, "cover-tiny"),
      h("span", { class: "option-text" },
        h("span", { class: "option-title" }, book.title || book.isbn || "Untitled"),
        h("span", { class: "option-meta" }, byline(book),
          book.in_model === false ? h("span", { class: "option-flag" }, " · too few ratings to learn from") : null)))));
    note.textContent = found.length ? `${found.length} match${found.length === 1 ? "" : "es"}; use the arrow keys and Enter to pick.` : `No books match “${query}”.`;
    if (found.length) {
      list.hidden = false;
      input.setAttribute("aria-expanded", "true");
      setActive(0);
    } else close();
  }

  const run = debounce(async (query) => {
    if (controller) controller.abort();
    if (query.length < 2) {
      note.textContent = query ? "Type at least 2 characters." : "";
      close();
      return;
    }
    controller = new AbortController();
    note.textContent = "Searching…";
    try {
      const data = await api.search(query, limit, controller.signal);
      if (input.value.trim() !== query) return; // typed on meanwhile
      show(Array.isArray(data.results) ? data.results : [], query);
    } catch (err) {
      if (err.name === "AbortError") return;
      close();
      note.textContent = err.name === "ApiError" ? err.message : "Search failed; please try again.";
    }
  }, 220);

  input.addEventListener("input", () => run(input.value.trim()));
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowDown" && results.length) {
      ev.preventDefault();
      if (list.hidden) { list.hidden = false; input.setAttribute("aria-expanded", "true"); }
      setActive((active + 1) % results.length);
    } else if (ev.key === "ArrowUp" && results.length) {
      ev.preventDefault();
      setActive((active - 1 + results.length) % results.length);
    } else if (ev.key === "Enter") {
      if (!list.hidden && active >= 0) { ev.preventDefault(); pick(active); }
    } else if (ev.key === "Escape") {
      close();
    }
  });
  input.addEventListener("blur", () => setTimeout(close, 120));

  return h("div", { class: "search" },
    h("label", { for: id, class: "label" }, label),
    h("div", { class: "search-box" }, input, list),
    note);
}
