// Building the page without ever parsing data as markup: every text from the
// API goes through createTextNode (textContent), never through an HTML parser.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) {
      // Listeners are functions added here, never attribute strings.
      el.addEventListener(name.slice(2), value);
    } else if (name === "text") {
      el.textContent = String(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("td", {class: "x"}, "text", otherNode). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, for the topology graph. */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace the children of `el` with `children`. */
export function put(el, ...children) {
  el.replaceChildren();
  return fill(el, {}, children);
}

/** A table with a header row; `rows` are arrays of cells (text or nodes). */
export function table(headers, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows));
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind || text}` }, text);
}

export function tags(list) {
  return h("span", { class: "tags" }, (list || []).map((t) => h("span", { class: "tag" }, t)));
}

/** `{k: v}` as k=v chips. */
export function meta(obj) {
  return tags(Object.entries(obj || {}).map(([k, v]) => `${k}=${v}`));
}

/** A duration in seconds as "3d 4h", "5h 10m", "42s". */
export function ago(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400), hr = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

/**
 * A button that acts on a second click within a few seconds ("Delete" then
 * "Confirm delete"): one stray click never removes a rule or a key.
 */
export function confirmButton(label, attrs, action) {
  const button = h("button", { type: "button", class: "danger", ...attrs }, label);
  let armed = null;
  button.addEventListener("click", () => {
    if (armed) {
      clearTimeout(armed);
      armed = null;
      button.textContent = label;
      action();
      return;
    }
    button.textContent = `Confirm ${label.toLowerCase()}`;
    armed = setTimeout(() => { armed = null; button.textContent = label; }, 4000);
  });
  return button;
}
