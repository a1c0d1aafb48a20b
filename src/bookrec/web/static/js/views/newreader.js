// New readers: search the whole catalogue, add a few books read (rated 1-10, or just marked as
// read: "not rated"), and get recommendations: what readers of those books also read, with the
// ratings folded into the model. The list is kept in localStorage across reloads.

import { h, clear, fmt, isNum } from "../dom.js";
import { api } from "../api.js";
import { loading, empty, errorBox, cardList, basisBadge, bookSearch, cover, bookLink } from "../components.js";
import { state, loadRatings, saveRatings } from "../state.js";

const DEFAULT_RATING = 8;
const NOT_RATED = ""; // the select's value for a book read and not rated (stored as rating: null)
export const ADD_BOOK_EVENT = "bookrec:add-book";

export function createNewReaderView() {
  let ratings = loadRatings();
  let controller = null;

  const list = h("ol", { class: "rated", "aria-label": "Your books" });
  const listEmpty = empty("No books yet. Search above and add a few you have read.");
  const unratedToggle = h("input", { type: "checkbox", id: "add-unrated", class: "checkbox" });
  const toggleField = h("div", { class: "field toggle-field" },
    h("label", { for: "add-unrated", class: "toggle" }, unratedToggle, " Add books as read, without a rating"),
    h("p", { class: "help" }, "A book you read tells the model what you pick up, even without a rating."));
  const countLine = h("p", { class: "muted rated-count", "aria-live": "polite" });
  const topK = h("select", { id: "cold-top-k", class: "input input-small" },
    [5, 10, 15, 20].map((n) => h("option", { value: n, selected: n === 10 }, String(n))));
  const rankBy = h("select", { id: "cold-rank-by", class: "input input-small" },
    [["for_you", "For you"], ["mean", "Highest rated"], ["lower", "Safe bets"], ["sample", "Explore"]].map(([v, t]) => h("option", { value: v }, t)));
  const submit = h("button", { type: "button", class: "button button-primary", id: "cold-start-submit" }, "Get recommendations");
  const clearButton = h("button", { type: "button", class: "button button-quiet", id: "clear-ratings" }, "Clear list");
  const results = h("section", { class: "results", "aria-live": "polite", "aria-label": "Recommendations for you" });

  function persist() {
    saveRatings(ratings);
    renderList();
  }

  function add(book) {
    if (!book || !book.isbn) return;
    if (ratings.some((r) => r.isbn === book.isbn)) {
      countLine.textContent = `“${book.title || book.isbn}” is already in your list.`;
      return;
    }
    ratings.push({
      isbn: String(book.isbn),
      title: book.title || "",
      author: book.author || "",
      year: Number.isInteger(book.year) ? book.year : null,
      image_url: typeof book.image_url === "string" ? book.image_url : null,
      rating: unratedToggle.checked ? null : DEFAULT_RATING,
    });
    persist();
  }

  function ratingSelect(entry, index) {
    const id = `rating-${index}`;
    const select = h("select", { id, class: "input input-small rating-select", "aria-label": `Your rating for ${entry.title || entry.isbn}` },
      h("option", { value: NOT_RATED, selected: entry.rating === null }, "not rated"),
      Array.from({ length: 10 }, (_, k) => k + 1).map((v) => h("option", { value: v, selected: v === entry.rating }, String(v))));
    select.addEventListener("change", () => {
      entry.rating = select.value === NOT_RATED ? null : Number(select.value);
      select.closest(".rated-item")?.classList.toggle("is-unrated", entry.rating === null);
      saveRatings(ratings);
      renderCount();
    });
    return select;
  }

  function renderList() {
    clear(list);
    ratings.forEach((entry, index) => {
      const remove = h("button", { type: "button", class: "button button-icon remove", "aria-label": `Remove ${entry.title || entry.isbn}` }, "×");
      remove.addEventListener("click", () => {
        ratings = ratings.filter((r) => r !== entry);
        persist();
        submit.focus();
      });
      list.append(h("li", { class: `rated-item${entry.rating === null ? " is-unrated" : ""}`, "data-isbn": entry.isbn },
        cover(entry, "cover-tiny"),
        h("span", { class: "rated-text" },
          h("span", { class: "rated-title" }, bookLink(entry.isbn, entry.title || entry.isbn)),
          h("span", { class: "option-meta" }, [entry.author, entry.year].filter(Boolean).join(" · "))),
        h("span", { class: "rated-score" }, ratingSelect(entry, index), h("span", { class: "muted scale" }, "/ 10")),
        remove));
    });
    listEmpty.hidden = ratings.length > 0;
    list.hidden = ratings.length === 0;
    submit.disabled = ratings.length === 0;
    clearButton.hidden = ratings.length === 0;
    renderCount();
  }

  function renderCount() {
    const rated = ratings.filter((r) => r.rating !== null).length;
    countLine.textContent = ratings.length
      ? `${ratings.length} book${ratings.length === 1 ? "" : "s"}, ${rated} rated. ${ratings.length < 3 ? "Three or more give better results." : ""}`
      : "";
  }

  async function recommend() {
    if (!ratings.length) return;
    if (controller) controller.abort();
    controller = new AbortController();
    clear(results).append(loading("Finding books for you…"));
    // A book read and not rated goes as rating: null.
    const payload = ratings.map((r) => ({ isbn: r.isbn, title: r.title || undefined, rating: r.rating === null ? null : r.rating }));
    try {
      const data = await api.coldStart(payload, { topK: Number(topK.value), rankBy: rankBy.value, signal: controller.signal });
      render(data);
    } catch (err) {
      if (err.name === "AbortError") return;
      if (err.status !== 400) {
        clear(results).append(errorBox(err, { title: "Couldn't get recommendations", retry: recommend }));
        return;
      }
      // 400: the model could use none of the books. Say which, and what to do about it.
      const missing = err.detail && Array.isArray(err.detail.unrecognized) ? err.detail.unrecognized : [];
      clear(results).append(errorBox(err, {
        title: "None of these books are known to the model",
        message: `${missing.length ? "The books below were not recognised. " : ""}Find books you have read with the search box above and add them from its results.`,
      }));
      if (missing.length) {
        results.append(h("ul", { class: "recognised-list recognised" }, missing.map((r) => h("li", { class: "missing" },
          h("span", { class: "mark", "aria-hidden": "true" }, "✗"), `${describeInput(r)} `,
          h("span", { class: "muted" }, r && typeof r.reason === "string" ? r.reason : "not known to the model")))));
      }
    }
  }

  function render(data) {
    clear(results);
    const items = Array.isArray(data.recommendations) ? data.recommendations : [];
    const recognized = Array.isArray(data.recognized) ? data.recognized : [];
    const unrecognized = Array.isArray(data.unrecognized) ? data.unrecognized : [];
    const n = isNum(data.n_recognized) ? data.n_recognized : recognized.length;
    results.append(h("header", { class: "results-head" },
      h("h2", null, "Recommended for you"),
      basisBadge(data.basis || "folded_in"),
      h("span", { class: "muted" }, `from ${n} of your ${ratings.length} book${ratings.length === 1 ? "" : "s"}`)));

    const recognisedBlock = h("details", { class: "recognised", open: unrecognized.length > 0 },
      h("summary", null, `Recognised ${n} of ${recognized.length + unrecognized.length || ratings.length}`),
      h("ul", { class: "recognised-list" },
        recognized.map((r) => h("li", { class: "ok" }, h("span", { class: "mark", "aria-hidden": "true" }, "✓"),
          `${r.title || r.isbn || fmt(r.input)}`, h("span", { class: "muted" }, isNum(r.rating) ? ` rated ${fmt(r.rating, 0)}` : " read, not rated"))),
        unrecognized.map((r) => h("li", { class: "missing" }, h("span", { class: "mark", "aria-hidden": "true" }, "✗"),
          `${describeInput(r)} `, h("span", { class: "muted" }, `left out: ${r && typeof r.reason === "string" ? r.reason : "not known to the model"}`)))));
    results.append(recognisedBlock);
    if (data.note) results.append(h("p", { class: "notice" }, data.note));
    if (!items.length) {
      results.append(empty("No recommendations came back for these ratings."));
      return;
    }
    results.append(h("p", { class: "legend-line muted" },
      `Dot: predicted rating. Bar: ${Math.round(state.intervalLevel * 100)}% credible interval. Meter: the chance you like the book.`));
    results.append(cardList(items, { level: state.intervalLevel }));
  }

  /** A book the API could not use, by title (the reader's, when the API only echoes the ISBN) and ISBN. */
  function describeInput(r) {
    if (!r) return "?";
    if (typeof r === "string") return r;
    const mine = ratings.find((x) => x.isbn === r.input || x.isbn === r.isbn);
    const isbn = r.isbn || (mine && mine.isbn) || "";
    const title = r.title || (mine && mine.title) || "";
    if (title && isbn) return `${title} (ISBN ${isbn})`;
    return title || isbn || (r.input !== undefined ? String(r.input) : "?");
  }

  submit.addEventListener("click", recommend);
  clearButton.addEventListener("click", () => {
    ratings = [];
    persist();
    clear(results);
  });
  window.addEventListener(ADD_BOOK_EVENT, (ev) => add(ev.detail));

  const search = bookSearch({ label: "Find books you have read", onPick: add });

  renderList();
  const root = h("div", { class: "view view-new" },
    h("p", { class: "intro" }, "New here? Add a few books you have read, rated from 1 (disliked) to 10 (loved) or just marked as read, and get books that readers of those also read, with your ratings folded into the model. Your list stays in this browser."),
    h("div", { class: "controls" }, search, toggleField),
    h("section", { class: "rated-section", "aria-label": "Your books" },
      h("h2", { class: "section-title" }, "Your books"),
      listEmpty, list, countLine,
      h("div", { class: "inline actions" },
        h("label", { for: "cold-top-k", class: "label label-inline" }, "How many"), topK,
        h("label", { for: "cold-rank-by", class: "label label-inline" }, "Rank by"), rankBy),
      h("div", { class: "inline actions" }, submit, clearButton)),
    results);

  return { root, show() {} };
}
