// Known readers: pick a reader id (or a random one) and see their recommendations with intervals,
// the chance they like each book, and why it is there.

import { h, clear, fmtInt, isNum } from "../dom.js";
import { api } from "../api.js";
import { loading, empty, errorBox, cardList, basisBadge } from "../components.js";
import { state } from "../state.js";

// The same candidates, each mode sorted by its own score (the API's rank_by).
export const RANKINGS = [
  ["for_you", "For you", "Books this reader is likely to pick up and to like: how strongly their reading points to each, times the chance they like it"],
  ["mean", "Highest rated", "Highest predicted rating first"],
  ["lower", "Safe bets", "Highest lower bound of the interval first: books the model is sure the reader rates well"],
  ["sample", "Explore", "One draw from each book's predicted rating: uncertain books get a chance (changes every time)"],
];

export function createKnownView() {
  const userInput = h("input", {
    id: "user-id", name: "user", class: "input input-id", type: "text", inputmode: "numeric",
    autocomplete: "off", "aria-describedby": "user-id-help user-id-error", placeholder: "e.g. 8",
  });
  const userError = h("p", { id: "user-id-error", class: "field-error", "aria-live": "polite" });
  const slider = h("input", { id: "top-n", name: "top_n", type: "range", min: 1, max: 20, step: 1, value: 10, class: "slider", "aria-describedby": "top-n-value" });
  const sliderValue = h("output", { id: "top-n-value", for: "top-n", class: "slider-value" }, "10");
  const randomButton = h("button", { type: "button", class: "button button-quiet", id: "random-user" }, "Random reader");
  const results = h("section", { class: "results", "aria-live": "polite", "aria-label": "Recommendations" });

  const rankInputs = RANKINGS.map(([value, text, help], i) => {
    const id = `rank-${value}`;
    return h("span", { class: "segment" },
      h("input", { type: "radio", name: "rank_by", id, value, checked: i === 0 }),
      h("label", { for: id, title: help }, text));
  });

  const form = h("form", { class: "controls", novalidate: true, "aria-label": "Choose a reader" },
    h("div", { class: "field" },
      h("label", { for: "user-id", class: "label" }, "Reader id"),
      h("div", { class: "inline" }, userInput, randomButton),
      h("p", { id: "user-id-help", class: "help" }, "A numeric id of a reader in the dataset."),
      userError),
    h("div", { class: "field" },
      h("label", { for: "top-n", class: "label" }, "How many books"),
      h("div", { class: "inline" }, slider, sliderValue)),
    h("fieldset", { class: "field segmented" },
      h("legend", { class: "label" }, "Rank by"),
      h("div", { class: "segments" }, rankInputs),
      h("p", { class: "help", id: "rank-help" }, RANKINGS[0][2])),
    h("div", { class: "field field-submit" },
      h("button", { type: "submit", class: "button button-primary" }, "Show recommendations")));

  let controller = null;
  let lastUser = null;

  const rankBy = () => form.querySelector("input[name=rank_by]:checked").value;

  function validate() {
    const raw = userInput.value.trim();
    let message = "";
    if (!raw) message = "Enter a reader id, or press “Random reader”.";
    else if (!/^\d+$/.test(raw)) message = "A reader id is a whole number, like 8 or 276725.";
    else if (raw.length > 12) message = "That id is too long to be a reader id.";
    userError.textContent = message;
    userInput.setAttribute("aria-invalid", message ? "true" : "false");
    return message ? null : Number.parseInt(raw, 10);
  }

  async function load(userId) {
    if (controller) controller.abort();
    controller = new AbortController();
    lastUser = userId;
    const topK = Number(slider.value);
    clear(results).append(loading(`Finding books for reader ${userId}…`));
    try {
      const data = await api.recommend(userId, { topK, rankBy: rankBy(), signal: controller.signal });
      render(data, userId);
    } catch (err) {
      if (err.name === "AbortError") return;
      clear(results);
      if (err.status === 404) {
        results.append(h("div", { class: "status status-error", role: "alert" },
          h("strong", { class: "status-title" }, `No reader ${userId}`),
          h("p", { class: "status-message" }, `Reader ${userId} is not in the published data. Try “Random reader”, or `,
            h("a", { href: "#/new" }, "rate a few books as a new reader"), ".")));
      } else {
        results.append(errorBox(err, { title: "Couldn't load recommendations", retry: () => load(userId) }));
      }
    }
  }

  function render(data, userId) {
    const items = Array.isArray(data.recommendations) ? data.recommendations : [];
    clear(results);
    const level = state.intervalLevel;
    results.append(h("header", { class: "results-head" },
      h("h2", null, `Reader ${isNum(data.user_id) ? data.user_id : userId}`),
      data.basis ? basisBadge(data.basis) : null,
      h("span", { class: "muted" }, `${items.length} of ${fmtInt(data.total_available ?? items.length)} stored recommendations`)));
    if (data.basis === "popular") {
      results.append(h("p", { class: "notice" }, "We know too little about this reader, so these are popular, well-rated books."));
    }
    if (data.note) results.append(h("p", { class: "notice" }, data.note));
    if (!items.length) {
      results.append(empty("No recommendations for this reader."));
      return;
    }
    results.append(h("p", { class: "legend-line muted" },
      `Dot: predicted rating. Bar: ${Math.round(level * 100)}% credible interval: the model believes the reader's rating lands inside it ${Math.round(level * 100)} times in 100. `,
      "Meter: the chance the reader likes the book."));
    results.append(cardList(items, { level }));
  }

  slider.addEventListener("input", () => { sliderValue.textContent = slider.value; });
  slider.addEventListener("change", () => { if (lastUser !== null) load(lastUser); });
  form.addEventListener("change", (ev) => {
    if (ev.target.name !== "rank_by") return;
    const found = RANKINGS.find(([v]) => v === ev.target.value);
    form.querySelector("#rank-help").textContent = found ? found[2] : "";
    if (lastUser !== null) load(lastUser);
  });
  userInput.addEventListener("input", () => { if (userError.textContent) validate(); });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = validate();
    if (id === null) { userInput.focus(); return; }
    history.replaceState(null, "", `#/readers/${id}`);
    load(id);
  });
  randomButton.addEventListener("click", async () => {
    randomButton.disabled = true;
    try {
      const data = await api.randomUser();
      const id = Array.isArray(data.users) ? data.users[0] : undefined;
      if (id === undefined) {
        clear(results).append(empty("There are no readers with recommendations yet."));
        return;
      }
      userInput.value = String(id);
      validate();
      history.replaceState(null, "", `#/readers/${id}`);
      await load(id);
    } catch (err) {
      clear(results).append(errorBox(err, { title: "Couldn't pick a random reader" }));
    } finally {
      randomButton.disabled = false;
    }
  });

  results.append(empty("Pick a reader to see what they might like next, and how sure the model is."));

  const root = h("div", { class: "view view-known" },
    h("p", { class: "intro" }, "Recommendations for readers in the dataset. Each book shows why it is there, the predicted rating, the range the reader's rating is likely to fall in, and the chance they like it."),
    form, results);

  return {
    root,
    show(param) {
      if (param && /^\d+$/.test(param) && Number(param) !== lastUser) {
        userInput.value = param;
        if (validate() !== null) load(Number(param));
      }
    },
  };
}
