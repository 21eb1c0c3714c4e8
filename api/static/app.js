// Entry point of the web UI: two tabs on one page, Playground at / and Ops at /ops, switched
// without a reload (history.pushState) so a running answer keeps streaming. Loaded as an ES
// module from /ui/app.js; it imports its siblings, with no build step.

import { initOps, showOps } from "./ops.js";
import { initPlayground } from "./playground.js";

const TABS = { "/": "playground", "/ops": "ops" };
let tab = "playground";

function show(name) {
  tab = name;
  for (const view of document.querySelectorAll("[data-view]"))
    view.hidden = view.dataset.view !== name;
  for (const link of document.querySelectorAll("[data-tab]")) {
    if (link.dataset.tab === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title =
    name === "ops" ? "Ops \u00b7 inference-router" : "Playground \u00b7 inference-router";
  if (name === "ops") showOps();
}

function boot() {
  for (const link of document.querySelectorAll("[data-tab]")) {
    link.addEventListener("click", (ev) => {
      if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return; // new tab/window
      ev.preventDefault();
      if (link.dataset.tab !== tab) history.pushState({}, "", link.getAttribute("href"));
      show(link.dataset.tab);
    });
  }
  window.addEventListener("popstate", () => show(TABS[location.pathname] || "playground"));
  initPlayground(() => tab === "playground");
  initOps(() => tab === "ops");
  show(TABS[location.pathname] || "playground");
}

boot();
