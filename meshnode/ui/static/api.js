// The agent's own HTTP API, the same one the CLI uses. Writes carry the token
// kept in sessionStorage (gone when the tab closes, never sent to other sites).

const TOKEN_KEY = "meshnode.token";
const WAIT = "30s"; // blocking query wait: short enough to notice a dead agent

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** One request; JSON in and out. Throws ApiError with the agent's one-line error. */
export async function request(method, path, { body, signal, raw } = {}) {
  const headers = {};
  if (token()) headers["X-Consul-Token"] = token();
  let payload;
  if (body !== undefined) {
    payload = typeof body === "string" ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, { method, headers, body: payload, signal, cache: "no-store" });
  const text = await resp.text();
  if (!resp.ok) {
    let message = text;
    try {
      message = JSON.parse(text).error || text;
    } catch { /* not JSON: keep the text */ }
    throw new ApiError(resp.status, `${method} ${path.split("?")[0]}: ${resp.status} ${message}`);
  }
  const index = Number(resp.headers.get("X-Consul-Index") || 0);
  return { data: raw || !text ? text : JSON.parse(text), index };
}

export const get = (path, opts) => request("GET", path, opts).then((r) => r.data);

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

/**
 * Follow `path` with Consul blocking queries: call `onData(data)` now and at
 * every change, until `signal` aborts. A 404 is passed as null (an empty KV
 * folder). Errors are shown through `onError` and retried after a pause.
 */
export async function watch(path, signal, onData, onError) {
  let index = 0;
  const sep = path.includes("?") ? "&" : "?";
  while (!signal.aborted) {
    try {
      const url = index ? `${path}${sep}index=${index}&wait=${WAIT}` : path;
      let result;
      try {
        result = await request("GET", url, { signal });
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 404) throw err;
        result = { data: null, index: 0 };
      }
      if (signal.aborted) return;
      // An index that went backwards is a restarted agent: start over.
      const changed = !index || result.index !== index;
      index = result.index > 0 ? result.index : 0;
      if (changed) await onData(result.data);
      if (!index) await sleep(2000, signal);
      onError(null);
    } catch (err) {
      if (signal.aborted) return;
      onError(err);
      await sleep(2000, signal);
    }
  }
}

/** Call `fn` now and every `ms` until `signal` aborts (for endpoints with no index). */
export async function poll(ms, signal, fn, onError) {
  while (!signal.aborted) {
    try {
      await fn();
      onError(null);
    } catch (err) {
      if (signal.aborted) return;
      onError(err);
    }
    await sleep(ms, signal);
  }
}

/** Run `fn` over `items`, at most `limit` at a time (a browser keeps 6 connections per host). */
export async function mapLimited(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

export const q = encodeURIComponent;
