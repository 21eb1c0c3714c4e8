// The model picker: models from GET /v1/models with their availability (a live worker
// serves the model's queue), reloaded every 10 s while the playground is shown and idle.

import { errorBox, getJSON, h } from "./api.js";

const $ = (id) => document.getElementById(id);
const MODEL_KEY = "irouter.model";
const MODELS_EVERY_MS = 10000;

function showModelInfo() {
  const opt = $("model").selectedOptions[0];
  const info = $("model-info");
  if (!opt) return;
  localStorage.setItem(MODEL_KEY, opt.value);
  const up = opt.dataset.available === "true";
  info.replaceChildren(
    h("span", { class: `dot ${up ? "up" : "down"}` }),
    up ? "available" : "no live worker",
    ` \u00b7 ${opt.dataset.backend}`,
    opt.dataset.context ? ` \u00b7 ${opt.dataset.context} ctx` : "",
  );
}

/** Reload the picker; a 401 leaves it as it is (the playground then asks for a key). */
export async function loadModels() {
  let body;
  try {
    ({ body } = await getJSON("/v1/models"));
  } catch (exc) {
    if (exc.status === 401) $("model-info").textContent = "needs an API key";
    else $("model-info").replaceChildren(errorBox(exc.error, exc.status));
    delete $("model").dataset.signature; // so that the next answer redraws the info line
    return;
  }
  const select = $("model");
  const want = select.value || localStorage.getItem(MODEL_KEY);
  const models = body.data || [];
  const signature = JSON.stringify(models.map((m) => [m.id, m.available, m.owned_by]));
  if (signature === select.dataset.signature) return; // unchanged: keep an open picker open
  select.dataset.signature = signature;
  select.replaceChildren(
    ...models.map((m) =>
      h(
        "option",
        {
          value: m.id,
          dataset: {
            available: String(Boolean(m.available)),
            backend: m.owned_by,
            context: m.context_window ?? "",
          },
        },
        m.available ? `\u25CF ${m.id}` : `\u25CB ${m.id} (no worker)`,
      ),
    ),
  );
  const pick = models.find((m) => m.id === want) || models.find((m) => m.available) || models[0];
  if (pick) select.value = pick.id;
  if (!models.length) $("model-info").textContent = "No models in the registry.";
  showModelInfo();
}

/** Fill the picker now (the promise of that first load) and keep it current while
 * `shouldPoll()` says so. */
export function initModels(shouldPoll) {
  $("model").addEventListener("change", showModelInfo);
  $("refresh-models").addEventListener("click", loadModels);
  setInterval(() => shouldPoll() && !document.hidden && loadModels(), MODELS_EVERY_MS);
  return loadModels();
}
