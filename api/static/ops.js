// The ops view, refreshed every 2 s while shown: live workers (/admin/workers), backends
// with circuit, queue depth and latency (/admin/backends), and the jobs this browser's
// playground has run, their status confirmed by GET /v1/jobs/{id}. Nothing server-side is
// added for it: the job list lives in localStorage. When /admin answers 401 (ROUTER_ADMIN_KEY
// is set) it asks for the admin key and keeps it in sessionStorage, for this tab only.

import {
  TERMINAL,
  adminKey,
  clearJobs,
  errorBox,
  fmtMs,
  getJSON,
  h,
  loadJobs,
  saveJob,
  setAdminKey,
} from "./api.js";

const $ = (id) => document.getElementById(id);
const EVERY_MS = 2000;
const MAX_CHECKS = 10; // unfinished jobs asked about per refresh
const BEAT_SLACK_MS = 1000; // the Date header has 1 s resolution

let visible = () => false;
let inFlight = false;

const cell = (value, cls = null) =>
  h("td", { class: cls }, value === null || value === undefined || value === "" ? "-" : value);
const num = (value) => cell(value, "num");
const chips = (csv) =>
  String(csv || "")
    .split(",")
    .filter(Boolean)
    .map((x) => h("span", { class: "chip" }, x));
const empty = (cols, text) => h("tr", {}, h("td", { colspan: cols, class: "none" }, text));
const pair = (p) => `${fmtMs(p?.p50)} / ${fmtMs(p?.p99)}`;

function workerRow(w, serverNow) {
  const load = Number(w.load ?? w.active ?? 0);
  const cap = Number(w.capacity || 0);
  const left = Number(w.alive_until) * 1000 - serverNow;
  const beat = left > -BEAT_SLACK_MS ? "live" : `silent ${Math.round(-left / 1000)} s`;
  return h(
    "tr",
    { dataset: { worker: w.id } },
    h("td", { class: "mono", title: w.pid ? `pid ${w.pid}` : null }, w.id),
    h(
      "td",
      { dataset: { col: "queues" } },
      chips(w.queues),
      ...Object.entries(w.failed || {}).map(([queue, why]) =>
        h("div", { class: "failure", dataset: { failed: queue } }, `${queue} failed at start: ${why}`),
      ),
    ),
    h("td", { dataset: { col: "models" } }, chips(w.models)),
    cell(w.device),
    cell(w.dtype),
    h(
      "td",
      { class: "num" },
      cap
        ? h("meter", { min: 0, max: cap, value: load, title: `${load} of ${cap} batch slots` })
        : null,
      cap ? ` ${load} / ${cap}` : `${load} / -`,
    ),
    h("td", { class: "beat", dataset: { value: left > -BEAT_SLACK_MS ? "live" : "silent" } }, beat),
  );
}

function renderWorkers({ body, date }) {
  const rows = [...(body.data || [])].sort(
    (a, b) => String(a.queues).localeCompare(String(b.queues)) || a.id.localeCompare(b.id),
  );
  $("workers-count").textContent = `(${rows.length})`;
  $("workers").tBodies[0].replaceChildren(
    ...(rows.length ? rows.map((w) => workerRow(w, date)) : [empty(7, "no live workers")]),
  );
}

function backendRow(b) {
  const circuit = b.enabled === false ? "disabled" : b.circuit || "closed";
  const rate = typeof b.error_rate === "number" ? `${(b.error_rate * 100).toFixed(1)} %` : "-";
  return h(
    "tr",
    { dataset: { backend: b.name } },
    cell(b.name),
    cell(b.kind),
    h("td", {}, chips(b.queue)),
    h(
      "td",
      {},
      h("span", { class: "badge", dataset: { value: circuit } }, circuit.replace("_", "-")),
    ),
    num(b.live_workers),
    num(b.queue_depth),
    num(b.requests),
    num(rate),
    num(pair(b.ttft_ms)),
    num(pair(b.latency_ms)),
  );
}

function renderBackends({ body }) {
  const rows = body.data || [];
  $("backends-count").textContent = `(${rows.length})`;
  $("backends").tBodies[0].replaceChildren(
    ...(rows.length ? rows.map(backendRow) : [empty(10, "no backends")]),
  );
}

function jobRow(j) {
  return h(
    "tr",
    { dataset: { job: j.id } },
    cell(j.id, "mono"),
    cell(j.model),
    cell(j.backend),
    h(
      "td",
      { title: j.error || null },
      h("span", { class: "status", dataset: { value: j.status } }, j.status),
    ),
    num(fmtMs(j.ttft_ms)),
    num(fmtMs(j.latency_ms)),
    num(j.tokens),
    num(j.rate),
    cell(j.started ? new Date(j.started).toLocaleTimeString() : null),
    h("td", { class: "prompt", title: j.prompt || null }, j.prompt || ""),
  );
}

function renderJobs() {
  const jobs = loadJobs();
  $("jobs").tBodies[0].replaceChildren(
    ...(jobs.length ? jobs.map(jobRow) : [empty(10, "no jobs yet: run one in the playground")]),
  );
}

/** Ask the API about jobs it has not yet confirmed as finished. */
async function checkJobs() {
  const unconfirmed = loadJobs()
    .filter((j) => !j.confirmed)
    .slice(0, MAX_CHECKS);
  await Promise.all(
    unconfirmed.map(async (j) => {
      try {
        const { body } = await getJSON(`/v1/jobs/${encodeURIComponent(j.id)}`);
        const update = { id: j.id, status: body.status, confirmed: TERMINAL.has(body.status) };
        if (body.error) update.error = `${body.error.type}: ${body.error.message}`;
        saveJob(update);
      } catch (exc) {
        if (exc.status === 404) saveJob({ id: j.id, status: "expired", confirmed: true });
      }
    }),
  );
}

function showErrors(failures) {
  const box = $("ops-error");
  box.replaceChildren(
    ...failures.map(([path, exc]) => {
      const err = exc.error || { message: String(exc), type: "ui_error", param: null, code: null };
      const el = errorBox({ ...err, message: `${path}: ${err.message}` }, exc.status || null);
      if (exc.status === 403)
        el.append(
          h(
            "div",
            { class: "hint" },
            "Open this page from the API's own host, or set ROUTER_ADMIN_KEY and enter it here.",
          ),
        );
      return el;
    }),
  );
}

/** The admin endpoints refused the call (401): ask for the key, dropping one they refused. */
function askForAdminKey() {
  if (adminKey()) $("admin-refused").hidden = false;
  useAdminKey("");
  $("admin-form").hidden = false;
}

function useAdminKey(key) {
  setAdminKey(key);
  $("admin-forget").hidden = !key;
}

async function refresh(force = false) {
  if (inFlight || !visible() || document.hidden || (!force && $("ops-pause").checked)) return;
  inFlight = true;
  const sent = adminKey();
  try {
    const [workers, backends] = await Promise.allSettled([
      getJSON("/admin/workers", { admin: true }),
      getJSON("/admin/backends", { admin: true }),
      checkJobs(),
    ]);
    const failures = [];
    if (workers.status === "fulfilled") renderWorkers(workers.value);
    else failures.push(["/admin/workers", workers.reason]);
    if (backends.status === "fulfilled") renderBackends(backends.value);
    else failures.push(["/admin/backends", backends.reason]);
    const refused = failures.some(([, exc]) => exc.status === 401);
    if (refused && adminKey() === sent) askForAdminKey(); // not if a new key came meanwhile
    showErrors(failures.filter(([, exc]) => exc.status !== 401));
    renderJobs();
    $("ops-updated").textContent =
      `refreshed every 2 s \u00b7 last ${new Date().toLocaleTimeString()}`;
  } finally {
    inFlight = false;
  }
}

function loop() {
  refresh().finally(() => setTimeout(loop, EVERY_MS));
}

/** Refresh now (the tab was just opened). */
export function showOps() {
  renderJobs();
  refresh(true);
}

/** Wire the ops view up; `isVisible()` says whether its tab is shown. */
export function initOps(isVisible) {
  visible = isVisible;
  useAdminKey(adminKey());
  $("admin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    useAdminKey($("admin-key").value.trim());
    $("admin-key").value = "";
    $("admin-form").hidden = true;
    $("admin-refused").hidden = true;
    refresh(true);
  });
  $("admin-forget").addEventListener("click", () => {
    useAdminKey("");
    refresh(true);
  });
  $("jobs-clear").addEventListener("click", clearJobs);
  window.addEventListener("jobs-changed", () => visible() && renderJobs());
  window.addEventListener("storage", () => visible() && renderJobs()); // another tab ran a job
  loop();
}
