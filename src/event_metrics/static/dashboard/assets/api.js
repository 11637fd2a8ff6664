// Requests to this service, and only to it: the read key goes in the Authorization header
// of same-origin requests, never in a URL.

/** An error answer, with the API's own words (docs/api.md, "Errors"). */
export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const detail = body && typeof body.detail === "string" ? body.detail : null;
    super(detail || `the service answered ${status}`);
    this.status = status;
    this.code = body && body.error ? body.error : null;
    this.parameter = body && body.parameter ? body.parameter : null;
    this.retryAfterS = retryAfter ? Number(retryAfter) : null;
  }
}

/** The service did not answer at all (stopped, network down). */
export class Unreachable extends Error {}

export async function getJson(path, params, key) {
  const url = new URL(path, window.location.origin);
  if (url.origin !== window.location.origin) throw new Error(`not this service: ${path}`);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  let response;
  try {
    response = await fetch(url, { headers, cache: "no-store", credentials: "omit" });
  } catch (error) {
    throw new Unreachable(`the service did not answer (${error.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok && !(path === "/health" && response.status === 503 && body)) {
    throw new ApiError(response.status, body, response.headers.get("Retry-After"));
  }
  return body;
}
