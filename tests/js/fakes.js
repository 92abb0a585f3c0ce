/* Stand-ins for the browser's EventSource and fetch, handed to ReplyStream (no globals are replaced). */

/** An EventSource class whose instances a test drives: it sends events, drops the connection (the browser
 * then reconnects by itself, with Last-Event-ID), or closes it for good. Each test makes its own class. */
export function fakeEventSourceClass() {
  class FakeEventSource extends EventTarget {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSED = 2;
    static opened = []; // every instance, in order

    constructor(url) {
      super();
      this.url = url;
      this.readyState = FakeEventSource.OPEN;
      this.lastEventId = ""; // what the browser would send as Last-Event-ID when it reconnects
      this.reconnects = []; // the Last-Event-ID of each reconnect
      FakeEventSource.opened.push(this);
    }

    close() {
      this.readyState = FakeEventSource.CLOSED;
    }

    get closed() {
      return this.readyState === FakeEventSource.CLOSED;
    }

    /** The server sends an event: `type` "message" for tokens (no `event:` line). */
    send(type, data, id) {
      if (this.closed) throw new Error("an event on a closed EventSource");
      if (id !== undefined) this.lastEventId = String(id);
      const body = typeof data === "string" ? data : JSON.stringify(data);
      this.dispatchEvent(new MessageEvent(type, { data: body, lastEventId: this.lastEventId }));
    }

    /** The connection drops: the browser says so with a data-less error and tries again. */
    drop() {
      this.readyState = FakeEventSource.CONNECTING;
      this.dispatchEvent(new Event("error"));
    }

    /** The browser's reconnect succeeded. */
    reconnect() {
      this.reconnects.push(this.lastEventId);
      this.readyState = FakeEventSource.OPEN;
    }

    /** The answer was not a stream (an error status, 204): the browser gives up for good. */
    refuse() {
      this.readyState = FakeEventSource.CLOSED;
      this.dispatchEvent(new Event("error"));
    }
  }
  return FakeEventSource;
}

/** A fetch that answers every request with the next of `answers` (a Response, or an Error to throw). */
export function fakeFetch(...answers) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    const answer = answers.shift();
    if (!answer) throw new Error(`no answer left for ${url}`);
    if (answer instanceof Error) throw answer;
    return answer;
  };
  fetch.calls = calls;
  return fetch;
}

export function jsonResponse(status, body) {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

/** Every event a ReplyStream emits, as [type, data]. */
export function record(stream, types) {
  const seen = [];
  for (const type of types) stream.addEventListener(type, (event) => seen.push([type, event.data]));
  return seen;
}

/** Let pending promises (fetch answers, async handlers) run. */
export function settle() {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** A Storage over a Map, like localStorage. */
export class MemoryStorage {
  constructor() {
    this.items = new Map();
  }

  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }

  setItem(key, value) {
    this.items.set(key, String(value));
  }

  removeItem(key) {
    this.items.delete(key);
  }
}
