// Book view: details, rating summary, and the books readers read together with it (the
// relevance model's weights, with their uncertainty).

import { h, clear, fmt, fmtInt, isNum } from "../dom.js";
import { api } from "../api.js";
import { loading, empty, errorBox, bookSearch, cover, bookLink } from "../components.js";
import { barChart, similarityBar, weightBar } from "../charts.js";
import { ADD_BOOK_EVENT } from "./newreader.js";

export function createBookView() {
  const detail = h("section", { class: "book-detail", "aria-live": "polite", "aria-label": "Book details" });
  const similar = h("section", { class: "similar", "aria-label": "Similar books" });
  let controller = null;
  let current = null;

  const search = bookSearch({
    label: "Look up a book",
    onPick: (book) => { location.hash = `#/book/${encodeURIComponent(book.isbn)}`; },
  });

  async function load(isbn) {
    if (controller) controller.abort();
    controller = new AbortController();
    current = isbn;
    clear(detail).append(loading("Loading the book…"));
    clear(similar);
    try {
      const book = await api.book(isbn, controller.signal);
      renderBook(book);
    } catch (err) {
      if (err.name === "AbortError") return;
      clear(detail).append(err.status === 404
        ? errorBox(err, { title: "Book not found", message: `No book with ISBN ${isbn} in the catalogue. Try searching by title above.` })
        : errorBox(err, { title: "Couldn't load the book", retry: () => load(isbn) }));
      return;
    }
    clear(similar).append(h("h2", { class: "section-title" }, "Readers who like this may also like"), loading("Finding similar books…"));
    try {
      const data = await api.similar(isbn, 10, controller.signal);
      renderSimilar(data);
    } catch (err) {
      if (err.name === "AbortError") return;
      clear(similar).append(h("h2", { class: "section-title" }, "Similar books"),
        errorBox(err, { title: "No similar books", retry: err.status === 404 ? null : () => load(isbn) }));
    }
  }

  function renderBook(book) {
    clear(detail);
    const editions = Array.isArray(book.editions) ? book.editions : [];
    const facts = [
      ["Author", book.author],
      ["Year", isNum(book.year) && book.year > 0 ? String(book.year) : null],
      ["Publisher", book.publisher],
      ["ISBN", book.isbn],
      ["Editions", editions.length ? fmtInt(editions.length) : null],
      ["Ratings", isNum(book.n_ratings) ? `${fmtInt(book.n_ratings)} (${fmtInt(book.n_explicit)} explicit)` : null],
      ["Mean rating", isNum(book.mean_rating) ? `${fmt(book.mean_rating, 2)} / 10` : null],
      ["In the model", book.in_model === undefined ? null : book.in_model ? "yes" : "no: too few ratings to learn from"],
    ];
    const addButton = h("button", { type: "button", class: "button button-quiet", id: "add-to-ratings" }, "Add to my books");
    addButton.addEventListener("click", () => {
      window.dispatchEvent(new CustomEvent(ADD_BOOK_EVENT, { detail: book }));
      addButton.textContent = "Added to your books";
      addButton.disabled = true;
    });
    const counts = book.rating_counts && typeof book.rating_counts === "object" ? book.rating_counts : null;
    const entries = counts ? Array.from({ length: 10 }, (_, k) => [String(k + 1), Number(counts[String(k + 1)] || 0)]) : [];
    detail.append(h("div", { class: "book-head" },
      cover(book, "cover-large"),
      h("div", { class: "book-info" },
        h("h2", { class: "book-title" }, book.title || "Untitled"),
        h("dl", { class: "facts" }, facts.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => [h("dt", null, k), h("dd", null, v)])),
        h("div", { class: "inline" }, addButton, h("a", { href: "#/new", class: "muted" }, "Go to your books"))),
      entries.some(([, v]) => v > 0)
        ? h("figure", { class: "figure book-ratings" }, barChart(entries, { label: `Explicit ratings of this book: ${entries.map(([k, v]) => `${v} rated ${k}`).join(", ")}`, xLabel: "rating" }),
          h("figcaption", null, "How readers rated this book"))
        : null));
  }

  function renderSimilar(data) {
    clear(similar);
    similar.append(h("h2", { class: "section-title" }, "Readers who like this may also like"));
    const items = Array.isArray(data.similar) ? data.similar : [];
    const together = data.basis !== "factor_cosine"; // read_together (and anything newer)
    if (!items.length) {
      similar.append(empty(together
        ? "No similar books: readers of this book have not read others often enough together with it."
        : "No similar books: this book has too few ratings to be in the model."));
      return;
    }
    similar.append(h("p", { class: "muted legend-line similar-basis" }, together
      ? "From what readers read together: how much reading this book raises the chance of reading each one (the relevance model's weight); the bar spans ± 2 posterior standard deviations."
      : "Similarity of the books' posterior factors (1 = read alike, 0 = unrelated); the bar spans ± 2 posterior standard deviations."));
    const max = Math.max(...items.map((it) => (isNum(it.similarity) ? it.similarity + 2 * (isNum(it.similarity_sd) ? it.similarity_sd : 0) : 0)), 1e-6);
    similar.append(h("ol", { class: "cards cards-similar" }, items.map((item, i) => h("li", { class: "card", "data-isbn": item.isbn || "" },
      h("span", { class: "rank" }, String(i + 1)),
      cover(item),
      h("div", { class: "card-body" },
        h("h3", { class: "card-title" }, bookLink(item.isbn, item.title || "Untitled")),
        h("p", { class: "card-meta" }, [item.author, isNum(item.year) && item.year > 0 ? item.year : null].filter(Boolean).join(" · ") || "—"),
        h("div", { class: "card-rating" },
          h("span", { class: "predicted" }, h("span", { class: "predicted-value" }, fmt(item.similarity, together ? 3 : 2)),
            h("span", { class: "predicted-scale" }, together ? " read together" : " similarity")),
          isNum(item.similarity_sd) ? h("span", { class: "ci-text" }, `± ${fmt(2 * item.similarity_sd, together ? 3 : 2)}`) : null),
        together ? weightBar(item.similarity, item.similarity_sd, { max }) : similarityBar(item.similarity, item.similarity_sd))))));
  }

  const intro = empty("Search for a book above, or open one from a recommendation.");
  const root = h("div", { class: "view view-book" }, h("div", { class: "controls" }, search), detail, similar);
  detail.append(intro);

  return {
    root,
    show(param) {
      if (param && param !== current) load(param);
    },
  };
}
