// Nodes: the member list as this agent sees it, with signer status and the
// state changes seen while the page is open (failed, left, back).
import { get, poll, watch } from "./api.js";
import { badge, h, meta, put, table } from "./dom.js";

const HISTORY_MAX = 50;

export function nodesPage(main, ctx) {
  const list = h("div", { "data-testid": "nodes" });
  const history = h("ol", { class: "history", "data-testid": "history" });
  put(main,
    h("h1", {}, "Nodes"),
    list,
    h("h2", {}, "State changes seen"),
    h("p", { class: "muted" }, "Since this page was opened; the agent keeps failed and left members until they are reaped."),
    history);
  const last = new Map();

  async function refresh() {
    const [members, elected, signers] = await Promise.all([
      get("/v1/agent/members", { signal: ctx.signal }),
      get("/v1/connect/ca/signers", { signal: ctx.signal }).catch(() => []),
      get("/v1/connect/ca/signers?all", { signal: ctx.signal }).catch(() => []),
    ]);
    const status = new Map(signers.map((s) => [s.Node, s.Status]));
    for (const name of elected) status.set(name, "elected");
    const now = new Date().toLocaleTimeString();
    for (const m of members) {
      const before = last.get(m.Name);
      if (before !== undefined && before !== m.State) {
        history.prepend(h("li", {}, `${now} ${m.Name}: ${before} → ${m.State}`));
        while (history.children.length > HISTORY_MAX) history.lastChild.remove();
      }
      last.set(m.Name, m.State);
    }
    const rows = members.map((m) => h("tr", { "data-node": m.Name },
      h("td", {}, m.Name),
      h("td", {}, `${m.Addr}:${m.Port}`),
      h("td", {}, badge(m.State || "unknown")),
      h("td", {}, meta(m.Tags)),
      h("td", {}, status.has(m.Name) ? badge(status.get(m.Name), "signer") : "—")));
    put(list, table(["Node", "Address", "Status", "Tags", "Signer"], rows));
  }

  // A member change moves the catalog index: follow it, and poll as well for
  // the signer list, which has no index.
  watch("/v1/catalog/nodes", ctx.signal, refresh, ctx.report("nodes"));
  poll(5000, ctx.signal, refresh, ctx.report("signers"));
}
