// The JSON API, called with the session cookie; a change carries the session's CSRF token
// (from the page's <meta name="csrf-token">) in X-CSRF-Token.

const CSRF = document.querySelector('meta[name="csrf-token"]')?.content ?? "";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, body) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = CSRF;
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) {
    // The session ended (expired, signed out elsewhere, key revoked): back to sign-in.
    window.location.assign("/ui");
    throw new ApiError(401, "signed out");
  }
  const data = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : r.statusText;
    throw new ApiError(r.status, detail);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body ?? {});

/** Query string from an object, skipping empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}

export const role = document.querySelector('meta[name="ef-role"]')?.content ?? "viewer";
const RANK = { viewer: 0, operator: 1, admin: 2 };
/** Whether the signed-in key's role is at least `needed`. */
export const can = (needed) => (RANK[role] ?? 0) >= RANK[needed];
