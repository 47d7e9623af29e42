// Topology: who may talk to whom, drawn as plain SVG. Edges are the declared
// upstreams and the exact intentions, coloured by what the intentions decide;
// on them, the live connections of this agent's proxies and the recent
// denials from its audit log (Consul's UI shows neither).
import { get, poll, watch } from "./api.js";
import { badge, h, put, s, table } from "./dom.js";
import { allowed, isProxy, loadServices, matchedRules } from "./catalog.js";

const WIDTH = 900, HEIGHT = 520, NODE_W = 120, NODE_H = 34;
const DENIAL_WINDOW_MS = 10 * 60 * 1000; // "recent" denials: the last ten minutes
const COLORS = { allow: "#2e7d32", deny: "#c62828", live: "#1565c0" };

function layout(names) {
  const cx = WIDTH / 2, cy = HEIGHT / 2;
  const r = Math.min(cx - NODE_W, cy - NODE_H * 1.5);
  const pos = new Map();
  names.forEach((n, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, names.length);
    pos.set(n, { x: cx + r * Math.cos(angle), y: cy + r * Math.sin(angle) });
  });
  return pos;
}

/** Where the segment from `a` towards `b` leaves a's box. */
function boxExit(a, b) {
  const dx = b.x - a.x, dy = b.y - a.y;
  const t = Math.min(Math.abs((NODE_W / 2 + 4) / (dx || 1e-9)), Math.abs((NODE_H / 2 + 4) / (dy || 1e-9)));
  return { x: a.x + dx * t, y: a.y + dy * t };
}

function markers() {
  return s("defs", {}, Object.entries(COLORS).map(([name, color]) =>
    s("marker", { id: `arrow-${name}`, viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: color }))));
}

function edgeShape(e, pos) {
  const a = pos.get(e.src), b = pos.get(e.dst);
  const p1 = boxExit(a, b), p2 = boxExit(b, a);
  // Bend each direction to its own side, so a => b and b => a do not overlap.
  const mx = (p1.x + p2.x) / 2, my = (p1.y + p2.y) / 2;
  const len = Math.hypot(p2.x - p1.x, p2.y - p1.y) || 1;
  const bend = 28;
  const c = { x: mx - ((p2.y - p1.y) / len) * bend, y: my + ((p2.x - p1.x) / len) * bend };
  const kind = e.allowed ? "allow" : "deny";
  const d = `M ${p1.x} ${p1.y} Q ${c.x} ${c.y} ${p2.x} ${p2.y}`;
  const g = s("g", { class: `edge ${kind}`, "data-edge": `${e.src}=>${e.dst}` },
    // Live connections: a wide blue band under the arrow.
    e.live ? s("path", { d, fill: "none", stroke: COLORS.live, "stroke-width": 8,
      "stroke-opacity": 0.3, "stroke-linecap": "round" }) : null,
    s("path", {
      d, fill: "none", stroke: COLORS[kind], "stroke-width": 2,
      "stroke-dasharray": e.declared ? null : "6 5",
      "marker-end": `url(#arrow-${kind})`,
    }));
  const labels = [];
  if (e.live) labels.push([`${e.live} live`, COLORS.live, "live"]);
  if (e.denied) labels.push([`✕ ${e.denied} denied`, COLORS.deny, "denied"]);
  if (!e.allowed && !e.denied) labels.push(["deny", COLORS.deny, "rule"]);
  // Labels sit at the control point, one bend beyond the curve, on the side it bows to.
  const nx = (c.x - mx) / bend, ny = (c.y - my) / bend;
  const sideways = Math.abs(nx) > Math.abs(ny);
  const anchor = !sideways ? "middle" : nx > 0 ? "start" : "end";
  labels.forEach(([text, color, kindName], i) => {
    let y = c.y + 4 + (i - (labels.length - 1) / 2) * 15;
    if (!sideways) y = ny > 0 ? c.y + 12 + i * 15 : c.y - 4 - (labels.length - 1 - i) * 15;
    g.append(s("text", { x: c.x + (sideways ? nx * 4 : 0), y, fill: color,
      class: `edge-label ${kindName}`, "text-anchor": anchor }, text));
  });
  return g;
}

function nodeShape(name, p, live) {
  return s("g", { class: "svc", "data-svc": name },
    s("rect", { x: p.x - NODE_W / 2, y: p.y - NODE_H / 2, width: NODE_W, height: NODE_H, rx: 8,
      fill: live ? "#e3f2fd" : "#fafafa", stroke: "#455a64" }),
    s("text", { x: p.x, y: p.y + 5, "text-anchor": "middle", class: "svc-name" }, name));
}

export function topologyPage(main, ctx) {
  const state = { services: [], upstreams: [], intentions: [], live: new Map(), denied: new Map() };
  const graph = h("div", { class: "graph", "data-testid": "topology" });
  const side = h("div", { class: "side" });
  put(main, h("h1", {}, "Topology"),
    h("p", { class: "muted" },
      "Arrows: declared upstreams (solid) and exact intentions (dashed), green where the intentions allow the pair, red where they deny it. ",
      "Blue: live connections through this agent's proxies. ✕: connections this agent's proxies refused in the last ten minutes."),
    h("div", { class: "topology" }, graph, side));

  function draw() {
    const edges = new Map();
    const edge = (src, dst) => {
      const key = `${src}\u0000${dst}`;
      if (!edges.has(key)) edges.set(key, { src, dst, declared: false, live: 0, denied: 0 });
      return edges.get(key);
    };
    for (const [src, dst] of state.upstreams) edge(src, dst).declared = true;
    for (const i of state.intentions) {
      if (i.SourceName !== "*" && i.DestinationName !== "*") edge(i.SourceName, i.DestinationName);
    }
    for (const [key, n] of state.live) edge(...key.split("\u0000")).live = n;
    for (const [key, n] of state.denied) edge(...key.split("\u0000")).denied = n;
    const names = new Set(state.services);
    for (const e of edges.values()) {
      e.allowed = allowed(state.intentions, e.src, e.dst);
      names.add(e.src);
      names.add(e.dst);
    }
    const sorted = [...names].sort();
    const pos = layout(sorted);
    const liveNames = new Set([...edges.values()].filter((e) => e.live).flatMap((e) => [e.src, e.dst]));
    put(graph, s("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, width: "100%", role: "img",
      "aria-label": "service topology" },
    markers(),
    [...edges.values()].filter((e) => e.src !== e.dst).map((e) => edgeShape(e, pos)),
    sorted.map((n) => nodeShape(n, pos.get(n), liveNames.has(n)))));
    if (!sorted.length) graph.append(h("p", { class: "muted" }, "No services registered yet."));

    const wild = state.intentions.filter((i) => i.SourceName === "*" || i.DestinationName === "*");
    const policy = matchedRules(state.intentions, "\u0000a", "\u0000b").decides;
    put(side,
      h("h2", {}, "Default"),
      h("p", { "data-testid": "default-policy" },
        policy ? badge(policy.Action) : badge("allow"), policy ? " by * ⇒ *" : " (no * ⇒ * rule)"),
      h("h2", {}, "Rules with *"),
      wild.length ? table(["Rule", "Action"], wild.map((i) => h("tr", {},
        h("td", {}, `${i.SourceName} ⇒ ${i.DestinationName}`), h("td", {}, badge(i.Action)))))
        : h("p", { class: "muted" }, "none"),
      h("h2", {}, "Live and refused"),
      table(["Pair", "Live", "Refused (10 min)"], [...edges.values()]
        .filter((e) => e.live || e.denied)
        .map((e) => h("tr", {}, h("td", {}, `${e.src} ⇒ ${e.dst}`),
          h("td", {}, String(e.live)), h("td", {}, String(e.denied))))));
  }

  watch("/v1/catalog/services", ctx.signal, async (catalog) => {
    const all = await loadServices(catalog, ctx.signal);
    const entries = all.flatMap((svc) => svc.entries.map((e) => e.Service));
    state.services = all.filter((svc) => svc.entries.some((e) => !isProxy(e.Service))).map((svc) => svc.name);
    state.upstreams = entries.filter(isProxy).flatMap((svc) =>
      (svc.Proxy?.Upstreams || []).map((u) => [svc.Proxy.DestinationServiceName, u.DestinationName]));
    draw();
  }, ctx.report("topology-services"));
  watch("/v1/connect/intentions", ctx.signal, (data) => {
    state.intentions = data || [];
    draw();
  }, ctx.report("topology-intentions"));
  poll(2000, ctx.signal, async () => {
    const [proxies, audit] = await Promise.all([
      get("/v1/agent/connect/proxies", { signal: ctx.signal }),
      get("/v1/agent/connect/audit?denied&limit=500", { signal: ctx.signal }),
    ]);
    const live = new Map();
    const bump = (map, src, dst, n) => {
      const key = `${src}\u0000${dst}`;
      map.set(key, Math.max(map.get(key) || 0, n));
    };
    for (const p of proxies) {
      for (const c of p.Connections || []) bump(live, c.Source, c.Destination, c.Count);
      for (const u of p.Upstreams || []) {
        const active = (u.Instances || []).reduce((n, i) => n + (i.Active || 0), 0);
        if (active) bump(live, p.Service, u.DestinationName, active);
      }
    }
    const denied = new Map();
    const since = Date.now() - DENIAL_WINDOW_MS;
    for (const a of audit) {
      if (Date.parse(a.Time) < since) continue;
      const key = `${a.Source}\u0000${a.Destination}`;
      denied.set(key, (denied.get(key) || 0) + 1);
    }
    const changed = JSON.stringify([...live, ...denied]) !==
      JSON.stringify([...state.live, ...state.denied]);
    state.live = live;
    state.denied = denied;
    if (changed) draw();
  }, ctx.report("topology-live"));
}
