// CA: the trusted roots, the signers, and the leaves this agent holds with
// their expiry.
import { get, poll, watch } from "./api.js";
import { ago, badge, h, put, table } from "./dom.js";

const short = (id) => (id || "").split(":").slice(0, 6).join(":") + (id && id.length > 17 ? "…" : "");

function expiry(isoText) {
  const left = (Date.parse(isoText) - Date.now()) / 1000;
  return left > 0 ? `in ${ago(left)}` : `expired ${ago(-left)} ago`;
}

export function caPage(main, ctx) {
  const roots = h("div", { "data-testid": "roots" });
  const config = h("div", { "data-testid": "ca-config" });
  const signers = h("div", { "data-testid": "signers" });
  const leaves = h("div", { "data-testid": "leaves" });
  put(main, h("h1", {}, "Certificate authority"),
    h("h2", {}, "Roots"), roots, config,
    h("h2", {}, "Signers"), signers,
    h("h2", {}, "Leaf certificates on this agent"),
    h("p", { class: "muted" }, "Each agent holds the leaves of its own services and sidecars; open another agent's UI for its leaves."),
    leaves);

  watch("/v1/connect/ca/roots", ctx.signal, async (data) => {
    const list = data?.Roots || [];
    put(roots, list.length ? [
      h("p", {}, "Trust domain ", h("code", {}, data.TrustDomain)),
      table(["Root", "ID", "Active", "Valid from", "Expires", "Intermediates"], list.map((r) =>
        h("tr", { title: r.ID },
          h("td", {}, r.Name), h("td", {}, h("code", {}, short(r.ID))),
          h("td", {}, r.Active ? badge("active", "passing") : badge("trusted", "kind")),
          h("td", { class: "time" }, r.NotBefore), h("td", { class: "time" }, `${r.NotAfter} (${expiry(r.NotAfter)})`),
          h("td", {}, String((r.IntermediateCerts || []).length))))),
    ] : h("p", { class: "muted" }, "The cluster has no CA yet: it starts when a signer is approved."));
    try {
      const c = await get("/v1/connect/ca/configuration", { signal: ctx.signal });
      put(config, h("p", { class: "muted" },
        `Provider ${c.Provider}, leaf TTL ${c.Config.LeafCertTTL}, `
        + `${c.Config.CASigners} signers, ${c.Config.CSRMaxPerSecond} CSRs/s per signer`));
    } catch {
      put(config);
    }
  }, ctx.report("roots"));

  poll(5000, ctx.signal, async () => {
    const [all, elected, mine] = await Promise.all([
      get("/v1/connect/ca/signers?all", { signal: ctx.signal }),
      get("/v1/connect/ca/signers", { signal: ctx.signal }),
      get("/v1/internal/ui/leaves", { signal: ctx.signal }),
    ]);
    put(signers, all.length ? table(["Node", "Status", "Rank", "Alive", "Key fingerprint", "Approved by"],
      all.map((n) => h("tr", { "data-signer": n.Node },
        h("td", {}, n.Node), h("td", {}, badge(n.Status, n.Status === "pending" ? "warning" : "passing")),
        h("td", {}, elected.includes(n.Node) ? String(elected.indexOf(n.Node) + 1) : ""),
        h("td", {}, n.Alive ? "yes" : "no"), h("td", {}, h("code", {}, short(n.Fingerprint))),
        h("td", {}, n.ApprovedBy || ""))))
      : h("p", { class: "muted" }, "No node asks to sign."));
    put(leaves, mine.length ? table(["Service", "Serial", "Valid from", "Expires", "SPIFFE ID"],
      mine.map((l) => h("tr", { "data-leaf": l.Service },
        h("td", {}, l.Service), h("td", {}, h("code", {}, short(l.SerialNumber))),
        h("td", { class: "time" }, l.ValidAfter), h("td", { class: "time" }, `${l.ValidBefore} (${expiry(l.ValidBefore)})`),
        h("td", {}, h("code", {}, l.ServiceURI)))))
      : h("p", { class: "muted" }, "No leaf issued on this agent yet."));
  }, ctx.report("signers"));
}
