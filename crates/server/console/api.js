// The console's only way to the server: the HTTP API, with the signed-in principal's token on
// every call. The token lives in sessionStorage (this tab only, gone when it closes).

const TOKEN = 'bulkhead.token';
const NAMESPACE = 'bulkhead.namespace';
// Set when the token is an ID token of the namespace's identity provider (it works in that
// namespace only, and cannot list namespaces).
const SSO = 'bulkhead.sso';

/** An error answer of the API: its HTTP status, `code`, message and request id. */
export class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

export const session = {
  get token() { return sessionStorage.getItem(TOKEN); },
  get namespace() { return sessionStorage.getItem(NAMESPACE); },
  get sso() { return sessionStorage.getItem(SSO) === '1'; },
  /** Signs in with an ID token of `namespace`'s identity provider. */
  setSso(token, namespace) {
    sessionStorage.setItem(TOKEN, token);
    sessionStorage.setItem(NAMESPACE, namespace);
    sessionStorage.setItem(SSO, '1');
  },
  set(token, namespace) {
    sessionStorage.setItem(TOKEN, token);
    sessionStorage.removeItem(SSO);
    if (namespace) sessionStorage.setItem(NAMESPACE, namespace); else sessionStorage.removeItem(NAMESPACE);
  },
  setNamespace(ns) { sessionStorage.setItem(NAMESPACE, ns); },
  clear() { sessionStorage.removeItem(TOKEN); sessionStorage.removeItem(NAMESPACE); sessionStorage.removeItem(SSO); },
};

/** `/v1/namespaces/<ns>` plus `rest`, with the name escaped. */
export function nsPath(ns, rest = '') {
  return `/v1/namespaces/${encodeURIComponent(ns)}${rest}`;
}

/**
 * Calls the API: `method` on `path` with `opts.query` (an object), `opts.json` (a body sent as
 * JSON) or `opts.body` (raw bytes), `opts.token` (default the session's), `opts.keepalive` (the
 * request outlives the page). Answers the parsed JSON, null for an empty answer, or with
 * `opts.raw` the Response itself. Throws ApiError. A 401 to the session's own token (revoked,
 * expired) also dispatches `bulkhead:signed-out` on `window`, whoever called.
 */
export async function api(method, path, opts = {}) {
  const token = opts.token ?? session.token;
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.json);
  } else if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/octet-stream';
    body = opts.body;
  }
  if (opts.idempotent) headers['Idempotency-Key'] = crypto.randomUUID();
  let url = path;
  if (opts.query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(opts.query)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    const text = q.toString();
    if (text) url += `?${text}`;
  }
  const r = await fetch(url, { method, headers, body, credentials: 'omit', cache: 'no-store', keepalive: !!opts.keepalive });
  if (r.status === 401 && token && token === session.token) {
    window.dispatchEvent(new CustomEvent('bulkhead:signed-out'));
  }
  if (!r.ok) {
    let code = 'http_error';
    let message = r.statusText;
    let requestId = r.headers.get('x-request-id') || '';
    try {
      const e = (await r.json()).error;
      code = e.code; message = e.message; requestId = e.request_id || requestId;
    } catch { /* not the error envelope */ }
    throw new ApiError(r.status, code, message, requestId);
  }
  if (opts.raw) return r;
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

/** Every item of a paged list at `path` (at most `max`). */
export async function all(path, query = {}, max = 1000) {
  const items = [];
  let cursor;
  do {
    const page = await api('GET', path, { query: { ...query, cursor } });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

/** The unpadded base64url of a string's UTF-8 bytes. */
export function base64url(text) {
  let bin = '';
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** A WebSocket to `path` authenticated by the session's token as a subprotocol (a browser
 *  cannot set Authorization on a WebSocket; a token never goes into a URL). */
export function socket(path) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${scheme}//${location.host}${path}`,
    ['bulkhead', `base64url.bearer.bulkhead.${base64url(session.token)}`]);
  ws.binaryType = 'arraybuffer';
  return ws;
}
