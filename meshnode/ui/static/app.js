// The shell: hash routing, the token bar, the error banner, and the context
// each page gets (an abort signal that ends its live updates on navigation).
import { get, setToken, token } from "./api.js";
import { h, put } from "./dom.js";
import { nodesPage } from "./nodes.js";
import { servicePage, servicesPage } from "./services.js";
import { intentionsPage } from "./intentions.js";
import { topologyPage } from "./topology.js";
import { caPage } from "./ca.js";
import { kvPage } from "./kv.js";

const pages = {
  nodes: nodesPage,
  services: servicesPage,
  service: servicePage,
  intentions: intentionsPage,
  topology: topologyPage,
  ca: caPage,
  kv: kvPage,
};

let settings = { TokenRequired: false, TokenAccepted: true, NodeName: "" };
let current = null; // the running page's AbortController
const errors = new Map(); // source -> message, so one recovery does not hide another

function showErrors() {
  const banner = document.getElementById("error");
  const text = [...errors.values()].join(" · ");
  banner.hidden = !text;
  banner.textContent = text;
}

function reporter(key) {
  return (err) => {
    if (err) errors.set(key, err.message || String(err));
    else errors.delete(key);
    showErrors();
  };
}

/** Why writes are refused, or "" when they are allowed. */
function writeBlock() {
  if (!settings.TokenRequired) return "";
  if (!token()) return "This agent requires an API token for writes: enter it above.";
  if (!settings.TokenAccepted) return "The API token above is not accepted by this agent.";
  return "";
}

async function loadSettings() {
  try {
    settings = await get("/v1/internal/ui/settings");
    errors.delete("settings");
  } catch (err) {
    errors.set("settings", err.message);
  }
  showErrors();
  put(document.getElementById("agent"), `${settings.NodeName} · ${settings.Datacenter || ""}`);
  const state = document.getElementById("token-state");
  if (!settings.TokenRequired) put(state, "not required by this agent");
  else if (!token()) put(state, "required for writes");
  else put(state, settings.TokenAccepted ? "accepted" : "not accepted");
  state.className = writeBlock() ? "warn" : "ok";
}

function route() {
  if (current) current.abort();
  current = new AbortController();
  errors.clear();
  showErrors();
  const [name, ...rest] = (location.hash.replace(/^#\/?/, "") || "nodes").split("/");
  const page = pages[name] || nodesPage;
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : "";
  for (const a of document.querySelectorAll("#nav a")) {
    const on = a.dataset.page === name || (name === "service" && a.dataset.page === "services");
    a.classList.toggle("active", on);
  }
  const main = document.getElementById("main");
  put(main);
  const ctx = {
    signal: current.signal,
    arg,
    report: reporter,
    writeBlock: writeBlock(),
    /** Disable the write controls of `form` and say why, when writes are refused. */
    gate(form) {
      const why = writeBlock();
      if (!why) return form;
      for (const el of form.querySelectorAll("input, select, textarea, button")) el.disabled = true;
      form.append(h("p", { class: "write-reason", "data-testid": "write-reason" }, why));
      return form;
    },
    /** Run a write; show its error in the banner. Returns true on success. */
    async write(what, fn) {
      try {
        await fn();
        reporter(what)(null);
        return true;
      } catch (err) {
        reporter(what)(err);
        return false;
      }
    },
  };
  page(main, ctx);
}

document.getElementById("token").value = token();
document.getElementById("token-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  setToken(document.getElementById("token").value.trim());
  await loadSettings();
  route();
});
document.getElementById("token-clear").addEventListener("click", async () => {
  document.getElementById("token").value = "";
  setToken("");
  await loadSettings();
  route();
});
window.addEventListener("hashchange", route);
loadSettings().then(route);
