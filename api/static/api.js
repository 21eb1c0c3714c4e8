// Shared pieces of the web UI: DOM building (text only, never innerHTML with server data),
// JSON calls to this API with OpenAI-shaped errors, the keys it is called with, and the
// browser-side list of recent jobs that the playground records and the ops view shows
// (localStorage, so other tabs see it).

const JOBS_KEY = "irouter.jobs";
const API_KEY = "irouter.apiKey"; // localStorage: the playground keeps its key across visits
const ADMIN_KEY = "irouter.adminKey"; // sessionStorage: the admin key lives as long as the tab
const MAX_JOBS = 50;
export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "expired"]);

/** Build an element: h("td", {class: "num"}, "12 ms", otherNode). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** A failed call, carrying the OpenAI `error` object and the HTTP status (0: no answer). */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message);
    this.status = status;
    this.error = error;
  }
}

function asError(status, body) {
  if (body && typeof body.error === "object" && body.error) return body.error;
  const message = status ? `HTTP ${status} with no OpenAI error body` : "The API did not answer.";
  return { message, type: "api_connection_error", param: null, code: null };
}

function keep(storage, name, value) {
  if (value) storage.setItem(name, value);
  else storage.removeItem(name);
}

/** The API key (`sk-ir-...`) sent to /v1, or "". */
export const apiKey = () => localStorage.getItem(API_KEY) || "";
export const setApiKey = (key) => keep(localStorage, API_KEY, key);
/** The admin key (ROUTER_ADMIN_KEY) sent to /admin, or "". */
export const adminKey = () => sessionStorage.getItem(ADMIN_KEY) || "";
export const setAdminKey = (key) => keep(sessionStorage, ADMIN_KEY, key);
localStorage.removeItem(ADMIN_KEY); // where earlier versions of this page kept it

/** A key as the page shows it: its first characters only. */
export const shortKey = (key) => `${key.slice(0, 10)}\u2026`;

/** GET `path` as JSON; {body, date} where date is the server's clock (Date header, ms). The
 * admin key goes to `admin` calls, the API key to /v1; a 401 from /v1 fires "api-key-needed"
 * on window (detail: the key sent), for the playground to ask for a key. */
export async function getJSON(path, { admin = false } = {}) {
  const headers = { Accept: "application/json" };
  const key = admin ? adminKey() : path.startsWith("/v1/") ? apiKey() : "";
  if (key) headers.Authorization = `Bearer ${key}`;
  let resp;
  try {
    resp = await fetch(path, { headers, cache: "no-store" });
  } catch (exc) {
    throw new ApiError(0, asError(0, null));
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (exc) {
    body = null; // not JSON: reported below by status
  }
  if (!resp.ok) {
    if (resp.status === 401 && !admin)
      window.dispatchEvent(new CustomEvent("api-key-needed", { detail: key }));
    throw new ApiError(resp.status, asError(resp.status, body));
  }
  const date = Date.parse(resp.headers.get("date") || "") || Date.now();
  return { body, date };
}

/** An OpenAI error as a block: type, code and message, with the raw body folded away. */
export function errorBox(error, status = null) {
  const title = h(
    "div",
    { class: "title" },
    status ? `${status} ` : "",
    error.type || "error",
    error.code ? [" \u00b7 ", h("code", {}, error.code)] : "",
  );
  const raw = JSON.stringify({ error }, null, 2);
  return h(
    "div",
    { class: "error", role: "alert", dataset: { type: error.type || "", code: error.code || "" } },
    title,
    h("div", { class: "message" }, error.message || ""),
    error.param ? h("div", { class: "hint" }, `param: ${error.param}`) : null,
    h("details", {}, h("summary", {}, "raw"), h("pre", {}, raw)),
  );
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "-";
  return ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

export function fmtRate(tokens, ms) {
  if (!tokens || !ms || ms <= 0) return "-";
  return (tokens / (ms / 1000)).toFixed(1);
}

export function loadJobs() {
  try {
    const jobs = JSON.parse(localStorage.getItem(JOBS_KEY) || "[]");
    return Array.isArray(jobs) ? jobs : [];
  } catch (exc) {
    return []; // a corrupt list is dropped, not fatal
  }
}

/** Insert or update one job by id (newest first), keeping the last MAX_JOBS. */
export function saveJob(update) {
  const jobs = loadJobs();
  const i = jobs.findIndex((j) => j.id === update.id);
  if (i >= 0) jobs[i] = { ...jobs[i], ...update };
  else jobs.unshift(update);
  localStorage.setItem(JOBS_KEY, JSON.stringify(jobs.slice(0, MAX_JOBS)));
  window.dispatchEvent(new CustomEvent("jobs-changed"));
}

export function clearJobs() {
  localStorage.removeItem(JOBS_KEY);
  window.dispatchEvent(new CustomEvent("jobs-changed"));
}
