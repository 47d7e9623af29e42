// Intentions: the list in precedence order (as the agent evaluates them),
// create allow/deny, delete, and "may A talk to B?" with the rule that decides.
import { get, q, request, watch } from "./api.js";
import { badge, confirmButton, h, put, table } from "./dom.js";
import { matchedRules } from "./catalog.js";

const exact = (src, dst) =>
  `/v1/connect/intentions/exact?source=${q(src)}&destination=${q(dst)}`;

function createForm(ctx) {
  const src = h("input", { name: "source", placeholder: "web or *", required: true, "data-testid": "create-source" });
  const dst = h("input", { name: "destination", placeholder: "db or *", required: true, "data-testid": "create-destination" });
  const action = h("select", { name: "action", "data-testid": "create-action" },
    h("option", { value: "allow" }, "allow"), h("option", { value: "deny" }, "deny"));
  const desc = h("input", { name: "description", placeholder: "description (optional)" });
  const form = h("form", { class: "inline", "data-testid": "create-form" },
    src, h("span", {}, "⇒"), dst, action, desc,
    h("button", { type: "submit", "data-testid": "create-submit" }, "Save"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { Action: action.value, Description: desc.value };
    if (await ctx.write("create", () => request("PUT", exact(src.value.trim(), dst.value.trim()), { body }))) {
      form.reset();
    }
  });
  return ctx.gate(form);
}

function checkForm(ctx, latest) {
  const src = h("input", { placeholder: "source", required: true, "data-testid": "check-source" });
  const dst = h("input", { placeholder: "destination", required: true, "data-testid": "check-destination" });
  const out = h("div", { class: "check-result", "data-testid": "check-result" });
  const form = h("form", { class: "inline", "data-testid": "check-form" },
    src, h("span", {}, "⇒"), dst, h("button", { type: "submit" }, "Check"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const [a, b] = [src.value.trim(), dst.value.trim()];
    try {
      const res = await get(`/v1/connect/intentions/check?source=${q(a)}&destination=${q(b)}`);
      const { rules, decides } = matchedRules(latest(), a, b);
      put(out,
        h("p", {}, badge(res.Allowed ? "Allowed" : "Denied", res.Allowed ? "allow" : "deny"),
          ` ${a} ⇒ ${b}: `,
          decides ? `decided by ${decides.SourceName} ⇒ ${decides.DestinationName} (${decides.Action}), precedence ${decides.Precedence}`
            : "no intention matched; the default policy allows"),
        rules.length ? table(["Matching rule", "Action", "Precedence"], rules.map((r) =>
          h("tr", { class: r === decides ? "decides" : "" },
            h("td", {}, `${r.SourceName} ⇒ ${r.DestinationName}`),
            h("td", {}, badge(r.Action)), h("td", {}, String(r.Precedence))))) : "");
      ctx.report("check")(null);
    } catch (err) {
      ctx.report("check")(err);
    }
  });
  return h("div", {}, form, out);
}

export function intentionsPage(main, ctx) {
  let intentions = [];
  const list = h("div", { "data-testid": "intentions" });
  put(main,
    h("h1", {}, "Intentions"),
    h("p", { class: "muted" }, "In evaluation order: the first rule that matches a pair decides; deny wins a tie. With no match, the connection is allowed (a * ⇒ * deny makes the default deny)."),
    h("h2", {}, "Create or replace"), createForm(ctx),
    h("h2", {}, "May A talk to B?"), checkForm(ctx, () => intentions),
    h("h2", {}, "Rules"), list);

  watch("/v1/connect/intentions", ctx.signal, (data) => {
    intentions = data || [];
    const rows = intentions.map((i) => {
      const del = confirmButton("Delete", { "data-testid": "delete" }, () => ctx.write("delete", () =>
        request("DELETE", exact(i.SourceName, i.DestinationName))));
      if (ctx.writeBlock) {
        del.disabled = true;
        del.title = ctx.writeBlock;
      }
      return h("tr", { "data-intention": `${i.SourceName}=>${i.DestinationName}` },
        h("td", {}, i.SourceName), h("td", {}, "⇒"), h("td", {}, i.DestinationName),
        h("td", {}, badge(i.Action)), h("td", {}, String(i.Precedence)),
        h("td", {}, i.Description || ""), h("td", {}, del));
    });
    put(list, rows.length
      ? table(["Source", "", "Destination", "Action", "Precedence", "Description", ""], rows)
      : h("p", { class: "muted" }, "No intentions: every connection is allowed."));
  }, ctx.report("intentions"));
}
