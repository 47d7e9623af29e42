// KV: browse by folder ("/"-separated), view, edit, create and delete keys.
import { q, request, watch } from "./api.js";
import { confirmButton, h, put } from "./dom.js";

const keyPath = (key) => `/v1/kv/${key.split("/").map(q).join("/")}`;

function decode(b64) {
  if (!b64) return "";
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

export function kvPage(main, ctx) {
  const prefix = ctx.arg && !ctx.arg.endsWith("/") ? `${ctx.arg}/` : ctx.arg;
  const list = h("div", { "data-testid": "kv-list" });
  const keyInput = h("input", { placeholder: "key", required: true, "data-testid": "kv-key", value: prefix });
  const value = h("textarea", { rows: 8, "data-testid": "kv-value" });
  const save = h("button", { type: "submit", "data-testid": "kv-save" }, "Save");
  const del = confirmButton("Delete", { "data-testid": "kv-delete" }, async () => {
    if (await ctx.write("kv", () => request("DELETE", keyPath(keyInput.value)))) value.value = "";
  });
  const editor = h("form", { class: "editor", "data-testid": "kv-editor" }, keyInput, value, h("div", {}, save, del));

  async function open(key) {
    keyInput.value = key;
    const { data } = await request("GET", keyPath(key));
    value.value = decode(data[0].Value);
  }
  editor.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    await ctx.write("kv", () => request("PUT", keyPath(keyInput.value), { body: value.value }));
  });

  const crumbs = [h("a", { href: "#/kv" }, "(root)")];
  let acc = "";
  for (const part of prefix.split("/").filter(Boolean)) {
    acc += `${part}/`;
    crumbs.push(" / ", h("a", { href: `#/kv/${q(acc)}` }, part));
  }
  put(main, h("h1", {}, "Key/Value"),
    h("p", { class: "muted" }, "Last writer wins: there is no check-and-set, so two editors of one key do not see each other's change before saving."),
    h("p", { class: "crumbs" }, crumbs),
    h("div", { class: "kv" }, list, ctx.gate(editor)));

  watch(`${keyPath(prefix)}?keys&separator=/`, ctx.signal, (keys) => {
    const items = (keys || []).filter((k) => k !== prefix).map((k) => {
      const label = k.slice(prefix.length);
      if (k.endsWith("/")) {
        return h("li", { class: "folder" }, h("a", { href: `#/kv/${q(k)}` }, label));
      }
      const link = h("a", { href: "#", "data-key": k }, label);
      link.addEventListener("click", (ev) => {
        ev.preventDefault();
        open(k).then(() => ctx.report("kv-open")(null), ctx.report("kv-open"));
      });
      return h("li", {}, link);
    });
    put(list, items.length ? h("ul", { class: "keys" }, items)
      : h("p", { class: "muted" }, "No keys here."));
  }, ctx.report("kv-list"));
}
