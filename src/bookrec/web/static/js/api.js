// The API client. The base URL comes from <meta name="api-base">: ".." when the API serves
// the page at /app/, "/api" behind the nginx frontend container that proxies the API.

function apiBase() {
  const meta = document.querySelector('meta[name="api-base"]');
  let base = (meta && meta.getAttribute("content")) || "..";
  if (!base.endsWith("/")) base += "/";
  return new URL(base, document.baseURI);
}

const BASE = apiBase();

export function apiUrl(path, params) {
  const url = new URL(String(path).replace(/^\//, ""), BASE);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
  }
  return url;
}

/** An error a person can read: `message` is always safe and friendly, `status` 0 = unreachable. */
export class ApiError extends Error {
  constructor(status, message, { retryAfter = null, detail = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.retryAfter = retryAfter;
    this.detail = detail;
  }
}

function detailText(body) {
  if (!body || typeof body !== "object") return null;
  const { detail } = body;
  if (typeof detail === "string") return detail;
  // FastAPI validation errors: [{loc: [...], msg: "..."}]
  if (Array.isArray(detail)) {
    const msgs = detail
      .map((d) => {
        if (!d || typeof d.msg !== "string") return null;
        const field = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body" && p !== "query" && p !== "path").join(".") : "";
        return field ? `${field}: ${d.msg}` : d.msg;
      })
      .filter(Boolean);
    return msgs.length ? msgs.join("; ") : null;
  }
  if (typeof body.reason === "string") return body.reason;
  return null;
}

// The API's messages are written for developers and may point at endpoints ("search with GET
// /books/search?q="): the page never shows those to readers, it says it in its own words.
const API_HINT = /\b(GET|POST|PUT|PATCH|DELETE) \//;

function friendlyMessage(status, body, retryAfter) {
  const text = detailText(body);
  const detail = text && !API_HINT.test(text) ? text : null;
  if (status === 503) {
    const wait = retryAfter ? ` Please try again in ${retryAfter} s.` : " Please try again shortly.";
    return `The service is temporarily unavailable${detail ? ` (${detail.replace(/[.\s]+$/, "")})` : ""}.${wait}`;
  }
  if (status === 404) return detail || "Not found.";
  if (status === 400 || status === 422) return detail || "The request was not valid.";
  if (status === 429) return "Too many requests; please slow down and try again.";
  if (status >= 500) return "Something went wrong on the server. Please try again.";
  return detail || `Unexpected response (${status}).`;
}

// Listeners told whether the service looked available on each answer (the page rechecks
// /health when that changes, so the banner follows outages and recoveries quickly).
const availabilityListeners = new Set();

export function onAvailability(listener) {
  availabilityListeners.add(listener);
}

function report(available, enabled) {
  if (!enabled) return;
  for (const listener of availabilityListeners) listener(available);
}

async function request(path, { params, method = "GET", body, signal, reportAvailability = true } = {}) {
  const init = { method, signal, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(apiUrl(path, params), init);
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    report(false, reportAvailability);
    throw new ApiError(0, "Can't reach the service. Check that it is running and try again.");
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    const retryAfter = Number.isFinite(retry) ? retry : null;
    if (response.status === 503 || response.status === 502 || response.status === 504) report(false, reportAvailability);
    throw new ApiError(response.status, friendlyMessage(response.status, data, retryAfter), {
      retryAfter,
      detail: data,
    });
  }
  if (data === null) throw new ApiError(response.status, "The service sent an answer the page could not read.");
  report(true, reportAvailability);
  return data;
}

export const api = {
  // /health itself never triggers a recheck of /health.
  health: (opts) => request("health", { ...opts, reportAvailability: false }),
  recommend: (userId, { topK, rankBy, signal } = {}) =>
    request(`recommend/${encodeURIComponent(userId)}`, { params: { top_k: topK, rank_by: rankBy }, signal }),
  randomUser: (signal) => request("users", { params: { random: 1 }, signal }),
  coldStart: (ratings, { topK, rankBy = "for_you", signal } = {}) =>
    request("recommend/cold-start", { method: "POST", body: { ratings, top_k: topK, rank_by: rankBy }, signal }),
  search: (q, limit, signal) => request("books/search", { params: { q, limit }, signal }),
  book: (isbn, signal) => request(`books/${encodeURIComponent(isbn)}`, { signal }),
  similar: (isbn, n, signal) => request(`books/${encodeURIComponent(isbn)}/similar`, { params: { n }, signal }),
  // Without `traces` (most of the document's size) unless a view draws them.
  modelInfo: ({ traces = true, signal } = {}) =>
    request("model/info", { params: { traces: traces ? undefined : "false" }, signal }),
  stats: (signal) => request("stats", { signal }),
};
