// Page-wide state: the credible level of stored intervals and the liked threshold (from the
// model's meta), and the new reader's books (rated 1-10, or read and not rated: rating null),
// kept in localStorage so they survive a reload.

const STORAGE_KEY = "bookrec.new-reader.ratings.v1";
// The cold start's limits (bookrec.api.schemas.RatingIn): an entry past them fails the whole request.
const MAX_ISBN_LENGTH = 40;
const MAX_TITLE_LENGTH = 300;

export const state = {
  intervalLevel: 0.9,
  likedThreshold: null,
  modelVersion: null,
};

/** A stored rating: a whole number 1-10, or null for a book read and not rated. */
export function validRating(r) {
  return r === null || (Number.isInteger(r) && r >= 1 && r <= 10);
}

export function loadRatings() {
  try {
    const parsed = JSON.parse(localStorage.getItem(STORAGE_KEY) || "[]");
    if (!Array.isArray(parsed)) return [];
    // Stored data is untrusted too (older versions, other tabs, hand edits): keep only entries
    // the API accepts, so one bad entry cannot sink the request for the rest.
    return parsed
      .filter((r) => r && typeof r.isbn === "string" && r.isbn.trim() && r.isbn.length <= MAX_ISBN_LENGTH
        && validRating(r.rating === undefined ? null : r.rating))
      .map((r) => ({
        isbn: r.isbn,
        title: typeof r.title === "string" && r.title.length <= MAX_TITLE_LENGTH ? r.title : "",
        author: typeof r.author === "string" ? r.author : "",
        year: Number.isInteger(r.year) ? r.year : null,
        image_url: typeof r.image_url === "string" ? r.image_url : null,
        rating: r.rating === undefined ? null : r.rating,
      }));
  } catch {
    return [];
  }
}

export function saveRatings(ratings) {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(ratings));
  } catch {
    // Private mode or a full quota: the list still works for this visit.
  }
}
