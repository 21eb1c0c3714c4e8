// The chat playground: a model picker from /v1/models, request settings, and answers
// streamed over one WebSocket to /v1/ws. Per answer it shows backend, model, time to first
// token, tokens/s and cache status; Stop sends {"type":"cancel"} and the job ends cancelled.
// When the API wants a key (a 401 from /v1, or a socket refused) it asks for one and keeps it
// in localStorage; with auth off it never asks.

import { apiKey, errorBox, fmtMs, h, saveJob, setApiKey, shortKey } from "./api.js";
import { initModels, loadModels } from "./models.js";

const $ = (id) => document.getElementById(id);
const CONNECT_TIMEOUT_MS = 5000;

let socket = null; // the current WebSocket
let keyNeeded = false; // the API wants a key we do not have: the key form is shown
let opened = null; // resolves with `socket` once it is open
let retryMs = 500;
let current = null; // the answer being streamed, or null
let history = []; // this conversation: [{role, content}]

function setWsState(state) {
  const pill = $("ws-status");
  pill.dataset.state = state;
  const text = { open: "connected", connecting: "connecting", closed: "disconnected" };
  pill.textContent = { ...text, key: "needs API key" }[state];
}

function connect() {
  if (keyNeeded) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/v1/ws`;
  // A browser cannot set headers on a WebSocket: the key goes as a subprotocol (the server
  // selects "irouter"), never in the URL.
  const key = apiKey();
  let ws;
  try {
    ws = key ? new WebSocket(url, ["irouter", `irouter-key.${key}`]) : new WebSocket(url);
  } catch (exc) {
    askForKey(); // a key with characters a subprotocol cannot carry: not one of ours
    return;
  }
  socket = ws;
  setWsState("connecting");
  opened = new Promise((resolve, reject) => {
    ws.addEventListener("open", () => resolve(ws));
    ws.addEventListener("close", () => reject(new Error("closed")));
  });
  opened.catch(() => null); // a failed connect is handled by the close listener below
  ws.addEventListener("open", () => {
    retryMs = 500;
    setWsState("open");
  });
  ws.addEventListener("message", (ev) => {
    if (ws === socket) onMessage(ev.data);
  });
  ws.addEventListener("close", async () => {
    if (ws !== socket) return;
    setWsState(keyNeeded ? "key" : "closed");
    if (current) fail(current, "The WebSocket closed before the answer ended.");
    // A socket refused for its key looks like any other closed one: /v1/models tells, and
    // its 401 (missing, wrong or revoked key) asks for a key instead of reconnecting.
    if (!keyNeeded) await loadModels();
    if (ws !== socket || keyNeeded) return;
    setTimeout(() => socket === ws && connect(), retryMs);
    retryMs = Math.min(retryMs * 2, 8000);
  });
}

/** The open socket, reconnecting now if the last one closed. */
function ready() {
  if (keyNeeded) return Promise.reject(new Error("no key"));
  if (!socket || socket.readyState >= WebSocket.CLOSING) connect();
  const late = new Promise((_, reject) =>
    setTimeout(() => reject(new Error("timeout")), CONNECT_TIMEOUT_MS),
  );
  return Promise.race([opened, late]);
}

function buildBody(prompt) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history, { role: "user", content: prompt });
  const body = { model: $("model").value, messages };
  if ($("temperature").value !== "") body.temperature = Number($("temperature").value);
  if ($("max-tokens").value !== "") body.max_tokens = Number($("max-tokens").value);
  return body;
}

function field(name, title) {
  return h("span", { title }, `${name} `, h("b", { dataset: { field: name } }, "-"));
}

function set(answer, name, value) {
  const el = answer.el.querySelector(`[data-field="${name}"]`);
  el.textContent = value === null || value === undefined || value === "" ? "-" : String(value);
  if (name === "status") {
    el.className = "status";
    el.dataset.value = value;
    answer.el.dataset.status = value;
  }
}

function startAnswer(prompt) {
  const transcript = $("transcript");
  transcript.querySelector(".empty")?.remove();
  transcript.append(
    h(
      "div",
      { class: "msg user" },
      h("div", { class: "who" }, "user"),
      h("div", { class: "text" }, prompt),
    ),
  );
  const textEl = h("div", { class: "text answer-text" });
  const errorEl = h("div", { class: "answer-error" });
  const meta = h(
    "div",
    { class: "meta" },
    field("status", "job status"),
    field("backend", "backend (queue) that served the job"),
    field("model", "model that answered"),
    field("ttft", "time to first token, from sending the request"),
    field("tok/s", "decode speed after the first token"),
    field("tokens", "completion tokens"),
    field("latency", "from sending the request to its last event"),
    field("cache", "cache status (x-cache), when the job message carries one"),
    field("finish", "finish_reason"),
  );
  const el = h(
    "div",
    { class: "msg assistant" },
    h("div", { class: "who" }, "assistant"),
    textEl,
    errorEl,
    meta,
  );
  transcript.append(el);
  const answer = { prompt, el, textEl, errorEl, text: "", tokens: 0, job: null };
  answer.t0 = performance.now();
  answer.started = Date.now();
  answer.tFirst = answer.tLast = null;
  set(answer, "status", "sending");
  el.scrollIntoView({ block: "end" });
  return answer;
}

function setRunning(running) {
  $("send").disabled = running;
  $("key-forget").disabled = running;
  $("stop").disabled = !running;
  $("stop").textContent = "Stop";
}

function stickToBottom(fn) {
  const t = $("transcript");
  const atBottom = t.scrollHeight - t.scrollTop - t.clientHeight < 40;
  fn();
  if (atBottom) t.scrollTop = t.scrollHeight;
}

function onToken(a, msg) {
  const now = performance.now();
  if (a.tFirst === null) {
    a.tFirst = now;
    set(a, "ttft", fmtMs(now - a.t0));
    set(a, "status", "running");
  }
  a.tLast = now;
  a.tokens += 1;
  a.text += msg.delta || "";
  stickToBottom(() => {
    a.textEl.textContent = a.text;
  });
  set(a, "tokens", a.tokens);
  set(a, "tok/s", rate(a));
}

function rate(a) {
  if (a.tokens < 2 || a.tLast <= a.tFirst) return "-";
  return ((a.tokens - 1) / ((a.tLast - a.tFirst) / 1000)).toFixed(1);
}

function onMessage(raw) {
  let msg;
  try {
    msg = JSON.parse(raw);
  } catch (exc) {
    return; // the server sends only JSON; anything else is ignored
  }
  if (current) onAnswerMessage(current, msg);
  if (msg.type === "error" && msg.error?.code === "invalid_api_key") askForKey();
}

function onAnswerMessage(a, msg) {
  switch (msg.type) {
    case "job":
      a.job = msg;
      a.el.dataset.jobId = msg.id;
      set(a, "backend", msg.backend);
      set(a, "model", msg.model);
      set(a, "cache", msg.cache ?? msg.x_cache ?? "-");
      set(a, "status", "queued");
      saveJob({
        id: msg.id,
        model: msg.model,
        backend: msg.backend,
        status: "queued",
        started: a.started,
        prompt: a.prompt.slice(0, 120),
      });
      break;
    case "token":
      onToken(a, msg);
      break;
    case "restart": // a redelivered job starts over: drop the partial text
      a.text = "";
      a.tokens = 0;
      a.tFirst = null;
      a.textEl.textContent = "";
      break;
    case "done":
      finish(a, "succeeded", msg);
      break;
    case "cancelled":
      finish(a, "cancelled", msg);
      break;
    case "error":
      a.errorEl.append(errorBox(msg.error || { message: "Unknown error", type: "error" }));
      finish(a, "failed", msg);
      break;
    default:
      break;
  }
}

function finish(a, status, msg) {
  const end = performance.now();
  if (msg.usage && msg.usage.completion_tokens !== undefined)
    set(a, "tokens", msg.usage.completion_tokens);
  set(a, "status", status);
  set(a, "finish", msg.finish_reason || (status === "cancelled" ? "cancelled" : "-"));
  set(a, "latency", fmtMs(end - a.t0));
  if (a.job) {
    saveJob({
      id: a.job.id,
      status,
      ttft_ms: a.tFirst === null ? null : a.tFirst - a.t0,
      latency_ms: end - a.t0,
      tokens: msg.usage?.completion_tokens ?? a.tokens,
      rate: rate(a),
    });
  }
  if (status === "succeeded" || status === "cancelled") {
    history.push({ role: "user", content: a.prompt }, { role: "assistant", content: a.text });
  }
  current = null;
  setRunning(false);
}

function fail(a, message) {
  a.errorEl.append(errorBox({ message, type: "api_connection_error", param: null, code: null }));
  finish(a, "failed", {});
}

async function send(ev) {
  ev.preventDefault();
  const prompt = $("prompt").value.trim();
  if (current || !prompt) return;
  const body = buildBody(prompt);
  current = startAnswer(prompt);
  const a = current;
  setRunning(true);
  $("prompt").value = "";
  try {
    const ws = await ready();
    a.t0 = performance.now();
    ws.send(JSON.stringify(body));
  } catch (exc) {
    if (current !== a) return;
    fail(a, keyNeeded ? "Enter an API key first." : "Could not open the WebSocket to /v1/ws.");
  }
}

function stop() {
  if (!current || !socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ type: "cancel" }));
  $("stop").disabled = true;
  $("stop").textContent = "Stopping\u2026";
  set(current, "status", "stopping");
}

function clearConversation() {
  if (current) return;
  history = [];
  $("transcript").replaceChildren(h("p", { class: "empty" }, "New conversation."));
}

function showKey() {
  const key = apiKey();
  $("key-info").hidden = !key;
  $("key-shown").textContent = key ? shortKey(key) : "";
}

/** The API wants a key: drop the one it refused (if any), show the form, close the socket. */
function askForKey() {
  if (keyNeeded) return;
  keyNeeded = true;
  $("key-refused").hidden = !apiKey();
  setApiKey("");
  showKey();
  $("key-form").hidden = false;
  $("api-key").focus();
  setWsState("key");
  socket?.close();
}

/** Use `key` from now on ("": none), reloading the models and reopening the socket with it. */
function useKey(key) {
  setApiKey(key);
  showKey();
  keyNeeded = false;
  $("key-form").hidden = true;
  const old = socket;
  socket = null; // so that its close is not taken for a failure
  old?.close();
  retryMs = 500;
  setWsState("connecting");
  loadModels().then(() => socket || connect());
}

/** Wire the playground up; `visible()` says whether its tab is shown (for polling). */
export function initPlayground(visible) {
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) $("composer").requestSubmit();
  });
  $("stop").addEventListener("click", stop);
  $("clear").addEventListener("click", clearConversation);
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    useKey($("api-key").value.trim());
    $("api-key").value = "";
  });
  $("key-forget").addEventListener("click", () => useKey(""));
  // A 401 to a key other than the current one (changed meanwhile) is stale: ignored.
  window.addEventListener("api-key-needed", (ev) => ev.detail === apiKey() && askForKey());
  showKey();
  initModels(() => visible() && !current && !keyNeeded).then(() => connect());
}
