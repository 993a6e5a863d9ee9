// The management API as the UI calls it: HTTP Basic credentials kept in sessionStorage
// (gone with the tab), JSON in and out, and the API's {"error","reason"} bodies turned
// into ApiError. Paths are relative, so the UI also works behind a proxy's prefix.

const KEY = 'warren.basic';

/** The session's Basic token: set at login, cleared at logout. */
export const credentials = {
  get: () => sessionStorage.getItem(KEY),
  set(user, password) {
    // btoa takes Latin-1 only: encode the pair as UTF-8 bytes first.
    const bytes = new TextEncoder().encode(`${user}:${password}`);
    sessionStorage.setItem(KEY, btoa(String.fromCharCode(...bytes)));
  },
  clear: () => sessionStorage.removeItem(KEY),
};

/** A refusal by the API (status, RabbitMQ's `error` and `reason`), or no answer (0). */
export class ApiError extends Error {
  constructor(status, error, reason) {
    super(`${error}: ${reason}`);
    this.status = status;
    this.error = error;
    this.reason = reason;
  }

  /** Whether the credentials no longer log in (not a refused permission). */
  get loggedOut() {
    return this.status === 401 && this.error === 'not_authorized';
  }
}

/**
 * A path whose interpolated values are each encoded as one segment, so that names with
 * `/`, spaces or `#` stay whole: path`api/queues/${vhost}/${name}` (vhost `/` → `%2F`).
 */
export function path(strings, ...values) {
  return strings.reduce((out, s, i) => out + encodeURIComponent(values[i - 1]) + s);
}

/** `url` with `params` as its query string; empty and undefined values are left out. */
export function withQuery(url, params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== '') query.set(k, v);
  }
  const text = query.toString();
  return text ? `${url}?${text}` : url;
}

/** Calls the API; `body`, if given, is sent as JSON. The reply's JSON, or null. */
export async function api(method, url, body) {
  const headers = { Authorization: `Basic ${credentials.get() ?? ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    // credentials: 'omit' keeps the browser from popping up its own login on a 401.
    response = await fetch(url, {
      method,
      headers,
      credentials: 'omit',
      cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'no answer', `the broker did not answer (${e.message})`);
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const reason = json?.reason ?? (text || response.statusText);
    throw new ApiError(
      response.status,
      json?.error ?? `HTTP ${response.status}`,
      typeof reason === 'string' ? reason : JSON.stringify(reason),
    );
  }
  return json;
}

/** GET `url`. */
export const get = (url) => api('GET', url);
