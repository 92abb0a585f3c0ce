/* The JSON API client: requests, the server's JSON errors, and signing in when the server wants a key.
 *
 * No DOM here: the sign-in prompt belongs to the page, which hands it over with `useSignInPrompt`.
 */

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status; // 0 when the server could not be reached
  }
}

/** The server's error body ({code, status, message, errors?}) as one sentence. */
export function errorMessage(body, status) {
  if (body && typeof body === "object") {
    if (body.errors && typeof body.errors === "object") {
      // {field: [problems]}; the server names nested fields by their path (conversations.3.role).
      const details = Object.entries(body.errors).map(
        ([field, problems]) => `${field}: ${[].concat(problems).join(" ")}`,
      );
      if (details.length) return details.join("; ");
    }
    if (body.message) return String(body.message);
  }
  return `the server answered ${status}`;
}

export async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- signing in

let askForKey = null; // the page's prompt: resolves once a session is open, rejects when closed
let signingIn = null; // the prompt on screen: every request that met a 401 waits for the same one
let declined = false; // the person closed the prompt: no other opens until they ask (allowSignIn)

/** Use `prompt()` (a promise: resolved when signed in, rejected when the person gives up) to ask for a key. */
export function useSignInPrompt(prompt) {
  askForKey = prompt;
}

/** Ask for an API key, once for everything that waits for one. Rejects if the prompt is closed. */
export function signIn() {
  if (declined || !askForKey) return Promise.reject(new ApiError(401, "an API key is needed"));
  if (!signingIn) {
    signingIn = askForKey().then(
      () => {
        signingIn = null;
      },
      () => {
        signingIn = null;
        declined = true;
        throw new ApiError(401, "an API key is needed");
      },
    );
  }
  return signingIn;
}

/** The person asks to sign in after closing the prompt: the next 401 may ask again. */
export function allowSignIn() {
  declined = false;
}

/** Open a session (POST /session) with `{name, password}` or `{key}`: the server sets a cookie it then accepts
 * from every request and stream of the page. Throws an ApiError (401: wrong name, password or key; 429: too many
 * tries; 0: server unreachable). */
export async function openSession(credentials) {
  await send("POST", "/session", credentials);
}

/** Sign out (DELETE /session): the server forgets the session, so no copy of the cookie works any more. */
export async function closeSession() {
  await send("DELETE", "/session");
}

/** One request, as it is: no sign-in on a 401. */
async function send(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "the server cannot be reached");
  }
  if (!response.ok) throw new ApiError(response.status, errorMessage(await readJson(response), response.status));
  return response;
}

// ---------------------------------------------------------------- requests

/** A request that succeeded (after signing in, if the server asked for a key); throws an ApiError if not.
 * `body` is sent as JSON; a Blob (a file the person chose) is sent as it is, as JSON. */
async function request(method, path, body, { signIn: askFirst = true, signal } = {}) {
  const init = { method, headers: { Accept: "application/json" }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = body instanceof Blob ? body : JSON.stringify(body);
  }
  for (;;) {
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      if (signal && signal.aborted) throw error; // the caller gave up on it (an AbortError)
      throw new ApiError(0, "the server cannot be reached");
    }
    if (response.status === 401 && askFirst) {
      // The server wants a key and did nothing: sign in, then send the same request again.
      await signIn();
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, errorMessage(await readJson(response), response.status));
    return response;
  }
}

/** The JSON answer of a route (null for an empty one). With `{signIn: false}` a 401 is thrown as it is, for
 * the routes where it means something else than "no session" (PUT /me/password: the current password is wrong). */
export async function api(method, path, body, options) {
  return readJson(await request(method, path, body, options));
}

/** A page of a list route (GET) and the total the server gave in X-Total-Count (null without one). `signal` (an
 * AbortSignal) cancels the request: it then rejects with the AbortError. */
export async function apiPage(path, { signal } = {}) {
  const response = await request("GET", path, undefined, { signal });
  const total = Number.parseInt(response.headers.get("X-Total-Count") ?? "", 10);
  const items = await readJson(response);
  if (signal && signal.aborted) throw signal.reason;
  return { items: Array.isArray(items) ? items : [], total: Number.isNaN(total) ? null : total };
}

/** A download route's file: its content and the name the server gave it (Content-Disposition). */
export async function download(path) {
  const response = await request("GET", path);
  return { blob: await response.blob(), filename: attachmentName(response.headers.get("Content-Disposition")) };
}

/** The file name of a Content-Disposition header: `filename*=UTF-8''...` (RFC 6266) before `filename="..."`. */
export function attachmentName(header) {
  if (!header) return null;
  const extended = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(header);
  if (extended) {
    try {
      return decodeURIComponent(extended[1].trim());
    } catch {
      /* badly encoded: try the plain name */
    }
  }
  const plain = /filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]+))/i.exec(header);
  if (!plain) return null;
  return plain[1] !== undefined ? plain[1].replace(/\\(.)/g, "$1") : plain[2].trim();
}
