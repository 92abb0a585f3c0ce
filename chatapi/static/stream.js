/* One reply's event stream (GET /conversations/inference[_internet]/<chat_id>) as an EventTarget.
 *
 * It opens an EventSource and turns the server's events into events of its own, each a StreamEvent whose
 * `data` is the event's parsed JSON:
 *   start, queued, search, sources, warning, token ({content}) and done — as the server sends them;
 *   reconnecting ({attempt}) — the connection dropped and the EventSource is trying again: it sends
 *     Last-Event-ID and the server resumes after it;
 *   error ({message, code?}) — the reply failed (the server's `event: error`, an error answer instead of a
 *     stream, or too many reconnects in a row);
 *   unauthorized — the server wants a key: sign in, then call open() again;
 *   ended — the stream ended without `done` (the server answered 204: the reply was delivered already, or
 *     the connection closed for good after some events): the reply may be saved; look for it.
 * After done, error, unauthorized and ended the EventSource is closed, so that the browser does not open
 * the route again. The server's `: ping` comment lines keep an idle connection open; EventSource never shows
 * them to script, so there is nothing to do about them here.
 *
 * A model's pull (GET /models/<id>/progress) streams the same way, with its own events: `progress` and `done`
 * (options.events), `error` as above.
 *
 * No DOM: the EventSource class and fetch are parameters, so that tests can hand in fakes.
 */
import { errorMessage, readJson } from "./api.js";

// The server's named events; tokens have no `event:` line, so EventSource calls them "message".
const NAMED_EVENTS = ["start", "queued", "search", "sources", "warning", "done"];
const CONNECTING = 0; // EventSource.readyState
const MAX_RECONNECTS = 5; // reconnects in a row without an event before the stream gives up

/** The inference route of a chat's next reply: `mode` "local" or "internet"; `options` the query options
 * (max_tokens, temperature, top_p, seed; empty ones left out); `after` a message id (see ReplyStream);
 * `replace` (regenerate) the chat's last message, an Assistant one, which the reply replaces when saved. */
export function replyUrl(chatId, { mode = "local", options = {}, after = null, replace = null } = {}) {
  const route = mode === "internet" ? "inference_internet" : "inference";
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(options)) {
    if (value !== "" && value !== null && value !== undefined) params.set(name, value);
  }
  if (after) params.set("after", after);
  if (replace) params.set("replace", replace);
  const query = params.toString();
  return `/conversations/${route}/${encodeURIComponent(chatId)}${query ? `?${query}` : ""}`;
}

export class StreamEvent extends Event {
  constructor(type, data = null) {
    super(type);
    this.data = data;
  }
}

export class ReplyStream extends EventTarget {
  /** `url`: the inference route with its query (options, and `after=<message id>` to join a reply that may
   * have ended: the server then answers 204 instead of starting another). */
  constructor(url, options = {}) {
    super();
    const {
      EventSource = globalThis.EventSource,
      fetch = (...args) => globalThis.fetch(...args), // called unbound: the browser's wants `this` to be window
      maxReconnects = MAX_RECONNECTS,
      events = NAMED_EVENTS, // the server's named events passed on (error is always one)
    } = options;
    this.events = events;
    this.url = url;
    this.EventSource = EventSource;
    this.fetch = fetch;
    this.maxReconnects = maxReconnects;
    this.source = null;
    this.lastEventId = null; // the id of the last event received: the browser sends it when it reconnects
    this.failures = 0;
    this.reopened = false;
  }

  open() {
    this.close();
    const source = new this.EventSource(this.url);
    this.source = source;
    for (const kind of this.events) source.addEventListener(kind, (event) => this.receive(source, kind, event));
    source.addEventListener("message", (event) => this.receive(source, "token", event));
    source.addEventListener("error", (event) => this.onError(source, event));
  }

  close() {
    if (this.source) this.source.close();
    this.source = null;
  }

  emit(type, data = null) {
    this.dispatchEvent(new StreamEvent(type, data));
  }

  /** Stop and say why: error, unauthorized, ended. */
  end(type, data = null) {
    this.close();
    this.emit(type, data);
  }

  receive(source, kind, event) {
    if (source !== this.source) return; // from an EventSource closed meanwhile
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    this.lastEventId = event.lastEventId || this.lastEventId;
    this.failures = 0;
    if (kind === "done") this.close();
    this.emit(kind, data);
  }

  onError(source, event) {
    if (source !== this.source) return;
    if (typeof event.data === "string") {
      // The server's own `event: error`: the reply failed; the stream is over.
      let data = {};
      try {
        data = JSON.parse(event.data) || {};
      } catch {
        /* a message-less error */
      }
      this.lastEventId = event.lastEventId || this.lastEventId;
      this.end("error", { code: data.code, message: data.message || "the reply failed" });
      return;
    }
    if (source.readyState === CONNECTING) {
      // The connection dropped: the browser reconnects with Last-Event-ID and the server resumes.
      this.failures += 1;
      if (this.failures > this.maxReconnects) this.end("error", { message: "lost the connection to the server" });
      else this.emit("reconnecting", { attempt: this.failures });
      return;
    }
    // Closed for good: an answer that was not a stream (an error), or 204 after the end.
    if (this.lastEventId) this.end("ended");
    else this.diagnose(source);
  }

  /** EventSource hides why a stream would not open: ask the route again for its JSON error. */
  async diagnose(source) {
    const controller = new AbortController();
    let response;
    try {
      response = await this.fetch(this.url, { headers: { Accept: "application/json" }, signal: controller.signal });
    } catch {
      if (source === this.source) this.end("error", { message: "the server cannot be reached" });
      return;
    }
    if (source !== this.source) {
      controller.abort(); // closed meanwhile by its owner
    } else if (response.status === 401) {
      this.end("unauthorized"); // it started nothing
    } else if (response.status === 204) {
      this.end("ended"); // answered already
    } else if (response.ok) {
      controller.abort(); // it opens now (a passing failure): listen again, once
      if (this.reopened) {
        this.end("error", { message: "the reply stream could not be opened" });
      } else {
        this.reopened = true;
        this.open();
      }
    } else {
      this.end("error", { code: response.status, message: errorMessage(await readJson(response), response.status) });
    }
  }
}
