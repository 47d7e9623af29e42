// Views over the catalog and the intentions shared by several pages.
import { get, mapLimited, q } from "./api.js";

// At most this many services are read one by one for a page; past it the
// page says so rather than sending thousands of requests.
export const SERVICE_LIMIT = 200;

/**
 * Every service with its instances: [{name, tags, entries}] where entries are
 * /v1/health/service answers ({Node, Service, Checks}).
 */
export async function loadServices(catalog, signal) {
  const names = Object.keys(catalog || {}).sort().slice(0, SERVICE_LIMIT);
  return mapLimited(names, 4, async (name) => ({
    name,
    tags: catalog[name] || [],
    entries: (await get(`/v1/health/service/${q(name)}`, { signal })) || [],
  }));
}

/** "passing" unless some check says otherwise (critical beats warning). */
export function health(checks) {
  const states = (checks || []).map((c) => c.Status);
  if (states.includes("critical")) return "critical";
  if (states.includes("warning")) return "warning";
  return "passing";
}

export const isProxy = (svc) => svc.Kind === "connect-proxy";

/** Does an intention's name (a service or "*") match `name`? */
const matches = (pattern, name) => pattern === "*" || pattern === name;

/**
 * The intentions that apply to src => dst, highest precedence first (the API
 * lists them in evaluation order already), and the one that decides: the
 * first, with deny winning a tie, as the agent decides.
 */
export function matchedRules(intentions, src, dst) {
  const found = (intentions || []).filter(
    (i) => matches(i.SourceName, src) && matches(i.DestinationName, dst));
  found.sort((a, b) => b.Precedence - a.Precedence ||
    (a.Action === "deny" ? -1 : 0) - (b.Action === "deny" ? -1 : 0));
  return { rules: found, decides: found[0] || null };
}

export function allowed(intentions, src, dst) {
  const { decides } = matchedRules(intentions, src, dst);
  return decides ? decides.Action === "allow" : true;
}
