// The API client: the bearer token lives in sessionStorage (gone when the tab closes),
// every call sends it, and errors come back as ApiError with the API's code.

const TOKEN_KEY = 'sentinella.token';
const BASE = '/api/v1';

export class ApiError extends Error {
  constructor(status, code, message, problems) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || '';
    this.problems = problems || [];
  }
}

let onUnauthorized = () => {};

/** Called when the API says the token is missing, expired or revoked. */
export function setUnauthorizedHandler(f) {
  onUnauthorized = f;
}

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch (_) {
    return null;
  }
}

export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) {
    // No storage: the session lasts as long as the page.
  }
}

export function authHeaders() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function errorOf(response) {
  let code = '';
  let message = '';
  let problems = [];
  try {
    const body = await response.json();
    code = body?.error?.code || '';
    message = body?.error?.message || '';
    problems = body?.error?.problems || [];
  } catch (_) {
    // Not JSON (e.g. a proxy's page): the status says enough.
  }
  return new ApiError(response.status, code, message, problems);
}

/** A JSON request to the API; resolves with the body (null for 204). */
export async function api(path, { method = 'GET', body, auth = true } = {}) {
  const headers = { Accept: 'application/json', ...(auth ? authHeaders() : {}) };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(BASE + path, init);
  } catch (e) {
    throw new ApiError(0, 'network', e.message);
  }
  if (!response.ok) {
    const err = await errorOf(response);
    if (response.status === 401 && auth) onUnauthorized(err);
    throw err;
  }
  if (response.status === 204) return null;
  return response.json();
}

/** A file from the API (e.g. a PDF), as a Blob, with the same errors as `api`. */
export async function download(path) {
  let response;
  try {
    response = await fetch(BASE + path, { headers: authHeaders(), cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'network', e.message);
  }
  if (!response.ok) {
    const err = await errorOf(response);
    if (response.status === 401) onUnauthorized(err);
    throw err;
  }
  return response.blob();
}

export const get = (path) => api(path);
export const post = (path, body) => api(path, { method: 'POST', body: body ?? {} });

/** Builds a query string from the defined entries of `params`. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}
