// Services and one service's instances with their checks' output.
import { q, watch } from "./api.js";
import { badge, h, meta, put, table, tags } from "./dom.js";
import { SERVICE_LIMIT, health, isProxy, loadServices } from "./catalog.js";

function summary(svc) {
  const states = svc.entries.map((e) => health(e.Checks));
  const passing = states.filter((s) => s === "passing").length;
  const first = svc.entries[0]?.Service || {};
  const nodes = [...new Set(svc.entries.map((e) => e.Node.Node))];
  const upstreams = svc.entries.flatMap((e) => e.Service.Proxy?.Upstreams || [])
    .map((u) => u.DestinationName);
  return { passing, total: states.length, first, nodes, upstreams: [...new Set(upstreams)] };
}

export function servicesPage(main, ctx) {
  const list = h("div", { "data-testid": "services" });
  put(main, h("h1", {}, "Services"), list);
  watch("/v1/catalog/services", ctx.signal, async (catalog) => {
    const all = await loadServices(catalog, ctx.signal);
    const sidecars = new Set(all.filter((s) => s.entries.some((e) => isProxy(e.Service)))
      .flatMap((s) => s.entries.map((e) => e.Service.Proxy?.DestinationServiceName)));
    const rows = all.map((svc) => {
      const sum = summary(svc);
      const kind = isProxy(sum.first) ? "proxy" : sum.first.Connect?.Native ? "native" : "";
      const state = sum.passing === sum.total ? "passing" : sum.passing ? "warning" : "critical";
      return h("tr", { "data-service": svc.name },
        h("td", {}, h("a", { href: `#/service/${q(svc.name)}` }, svc.name), kind && badge(kind, "kind")),
        h("td", {}, badge(`${sum.passing}/${sum.total} passing`, state)),
        h("td", {}, tags(svc.tags)),
        h("td", {}, sum.nodes.join(", ")),
        h("td", {}, sidecars.has(svc.name) ? "yes" : ""),
        h("td", {}, sum.upstreams.join(", ")));
    });
    const more = Object.keys(catalog || {}).length > SERVICE_LIMIT
      ? h("p", { class: "muted" }, `Showing the first ${SERVICE_LIMIT} services.`) : "";
    put(list, table(["Service", "Health", "Tags", "Nodes", "Sidecar", "Upstreams"], rows), more);
  }, ctx.report("services"));
}

function checkRow(c) {
  return h("tr", {},
    h("td", {}, c.Name, h("div", { class: "muted" }, c.CheckID)),
    h("td", {}, badge(c.Status)),
    h("td", {}, c.Type || (c.ServiceID ? "" : "node")),
    h("td", {}, h("pre", { class: "output" }, c.Output || "")));
}

export function servicePage(main, ctx) {
  const name = ctx.arg;
  const body = h("div", { "data-testid": "service" });
  put(main, h("p", {}, h("a", { href: "#/services" }, "← Services")), h("h1", {}, name), body);
  watch(`/v1/health/service/${q(name)}`, ctx.signal, (entries) => {
    if (!entries || !entries.length) {
      put(body, h("p", { class: "muted" }, "No instance of this service is registered."));
      return;
    }
    put(body, entries.map((e) => {
      const svc = e.Service;
      const proxy = svc.Proxy || {};
      return h("section", { class: "card", "data-instance": svc.ID },
        h("h2", {}, svc.ID, " ", badge(health(e.Checks))),
        h("dl", {},
          h("dt", {}, "Node"), h("dd", {}, e.Node.Node),
          h("dt", {}, "Address"), h("dd", {}, `${svc.Address || e.Node.Address}:${svc.Port}`),
          h("dt", {}, "Tags"), h("dd", {}, tags(svc.Tags)),
          h("dt", {}, "Meta"), h("dd", {}, meta(svc.Meta)),
          isProxy(svc) && [
            h("dt", {}, "Proxy for"), h("dd", {}, proxy.DestinationServiceName || ""),
            h("dt", {}, "Upstreams"),
            h("dd", {}, (proxy.Upstreams || []).map((u) => `${u.DestinationName} → :${u.LocalBindPort}`).join(", ")),
          ]),
        table(["Check", "Status", "Type", "Output"], (e.Checks || []).map(checkRow)));
    }));
  }, ctx.report("service"));
}
