/* chatapi/static/stream.js: a reply's event stream, over a fake EventSource and a fake fetch. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Reply } from "../../chatapi/static/state.js";
import { ReplyStream, replyUrl } from "../../chatapi/static/stream.js";
import { fakeEventSourceClass, fakeFetch, jsonResponse, record, settle } from "./fakes.js";

const CHAT = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const URL = `/conversations/inference/${CHAT}`;
const EVERY_EVENT = [
  "start",
  "queued",
  "search",
  "sources",
  "warning",
  "token",
  "done",
  "error",
  "reconnecting",
  "unauthorized",
  "ended",
];

/** A stream over a fake EventSource class (and fetch); opened. */
function openStream({ fetch = fakeFetch(), maxReconnects } = {}) {
  const EventSource = fakeEventSourceClass();
  const stream = new ReplyStream(URL, { EventSource, fetch, maxReconnects });
  const seen = record(stream, EVERY_EVENT);
  stream.open();
  return { stream, seen, EventSource, source: EventSource.opened[0], fetch };
}

const SAVED = { id: "m2", role: "Assistant", chat_id: CHAT, message: "Paris.", sources: null };

describe("replyUrl", () => {
  test("names the route of the mode, the options that are set, after and replace", () => {
    assert.equal(replyUrl(CHAT), URL);
    const options = { max_tokens: "24", temperature: "", top_p: undefined, seed: "7" };
    assert.equal(replyUrl(CHAT, { options }), `${URL}?max_tokens=24&seed=7`);
    assert.equal(
      replyUrl(CHAT, { mode: "internet", options: { max_tokens: "24" }, after: "m1" }),
      `/conversations/inference_internet/${CHAT}?max_tokens=24&after=m1`,
    );
    assert.equal(
      replyUrl(CHAT, { after: "m1", replace: "m2" }),
      `${URL}?after=m1&replace=m2`, // a regenerate joined again after a reload
    );
    assert.equal(replyUrl("a/b"), "/conversations/inference/a%2Fb");
  });
});

describe("ReplyStream", () => {
  test("passes on the server's events with their data, tokens as token, and closes on done", () => {
    const { stream, seen, source } = openStream();
    assert.equal(source.url, URL);
    source.send("start", { chat_id: CHAT, message_id: "m2", mode: "internet", truncated: 0 }, 1);
    source.send("search", { query: "capital of France" }, 2);
    source.send("sources", { sources: [{ n: 1, title: "France", url: "https://example.org/", snippet: "" }] }, 3);
    source.send("warning", { message: "search failed on duckduckgo" }, 4);
    source.send("queued", { position: 2 }, 5);
    source.send("queued", { position: 1 }, 6);
    source.send("message", { content: "Par" }, 7);
    source.send("message", { content: "is." }, 8);
    assert.equal(source.closed, false);
    source.send("done", { message: SAVED, finish_reason: "stop" }, 9);

    assert.deepEqual(seen, [
      ["start", { chat_id: CHAT, message_id: "m2", mode: "internet", truncated: 0 }],
      ["search", { query: "capital of France" }],
      ["sources", { sources: [{ n: 1, title: "France", url: "https://example.org/", snippet: "" }] }],
      ["warning", { message: "search failed on duckduckgo" }],
      ["queued", { position: 2 }],
      ["queued", { position: 1 }],
      ["token", { content: "Par" }],
      ["token", { content: "is." }],
      ["done", { message: SAVED, finish_reason: "stop" }],
    ]);
    assert.equal(source.closed, true, "the EventSource would reconnect after the server ends the response");
    assert.equal(stream.lastEventId, "9");
  });

  test("the server's error event ends the stream with its message and closes it", () => {
    const { seen, source } = openStream();
    source.send("message", { content: "Hi" }, 1);
    source.send("error", { code: 500, message: "chat 3fa8 was deleted" }, 2);
    assert.deepEqual(seen.at(-1), ["error", { code: 500, message: "chat 3fa8 was deleted" }]);
    assert.equal(source.closed, true);

    const other = openStream();
    other.source.send("error", "not json");
    assert.deepEqual(other.seen, [["error", { code: undefined, message: "the reply failed" }]]);
    assert.equal(other.source.closed, true);
  });

  test("a dropped connection is left to the browser's reconnect, which sends the last event's id", () => {
    const { stream, seen, source, EventSource } = openStream();
    source.send("start", { message_id: "m2" }, "e1");
    source.send("message", { content: "One" }, "e2");
    source.drop();
    assert.deepEqual(seen.at(-1), ["reconnecting", { attempt: 1 }]);
    assert.equal(source.closed, false, "closing it would stop the reconnect");
    source.reconnect();
    source.send("message", { content: " two" }, "e3");
    source.drop();
    source.reconnect();
    source.send("done", { message: SAVED, finish_reason: "stop" }, "e4");

    assert.deepEqual(source.reconnects, ["e2", "e3"]); // Last-Event-ID of each reconnect
    assert.equal(EventSource.opened.length, 1, "a new EventSource would not send Last-Event-ID");
    // Each reconnect was the first since an event: the count starts again after every event.
    assert.deepEqual(
      seen.filter(([type]) => type === "reconnecting"),
      [
        ["reconnecting", { attempt: 1 }],
        ["reconnecting", { attempt: 1 }],
      ],
    );
    assert.equal(seen.at(-1)[0], "done");
    assert.equal(stream.lastEventId, "e4");
  });

  test("gives up after too many reconnects in a row without an event", () => {
    const { seen, source } = openStream({ maxReconnects: 3 });
    source.send("message", { content: "One" }, 1);
    for (let i = 0; i < 4; i++) source.drop();
    assert.deepEqual(
      seen.slice(1).map(([type, data]) => [type, data.attempt ?? data.message]),
      [
        ["reconnecting", 1],
        ["reconnecting", 2],
        ["reconnecting", 3],
        ["error", "lost the connection to the server"],
      ],
    );
    assert.equal(source.closed, true);
  });

  test("a stream closed for good after events has ended: the reply may be saved", () => {
    const { seen, source, fetch } = openStream();
    source.send("message", { content: "One" }, 1);
    source.drop();
    source.refuse(); // the reconnect was answered 204: delivered in full
    assert.deepEqual(seen.slice(-2), [
      ["reconnecting", { attempt: 1 }],
      ["ended", null],
    ]);
    assert.equal(source.closed, true);
    assert.equal(fetch.calls.length, 0);
  });

  test("a stream that would not open is asked again for its JSON error", async () => {
    const problem = { code: 422, status: "Unprocessable Entity", errors: { max_tokens: ["Must be at most 2048."] } };
    const { seen, source, fetch } = openStream({ fetch: fakeFetch(jsonResponse(422, problem)) });
    source.refuse();
    await settle();
    assert.deepEqual(fetch.calls.map((call) => [call.url, call.init.headers.Accept]), [[URL, "application/json"]]);
    assert.deepEqual(seen, [["error", { code: 422, message: "max_tokens: Must be at most 2048." }]]);
    assert.equal(source.closed, true);
  });

  test("a 401 asks its owner to sign in, and open() tries again", async () => {
    const { stream, seen, source, EventSource } = openStream({ fetch: fakeFetch(jsonResponse(401, {})) });
    source.refuse();
    await settle();
    assert.deepEqual(seen, [["unauthorized", null]]);
    stream.open();
    assert.equal(EventSource.opened.length, 2);
    EventSource.opened[1].send("done", { message: SAVED, finish_reason: "stop" }, 1);
    assert.equal(seen.at(-1)[0], "done");
  });

  test("a 204 on the first request has ended (answered already); an unreachable server is an error", async () => {
    const delivered = openStream({ fetch: fakeFetch(new Response(null, { status: 204 })) });
    delivered.source.refuse();
    await settle();
    assert.deepEqual(delivered.seen, [["ended", null]]);

    const offline = openStream({ fetch: fakeFetch(new TypeError("Failed to fetch")) });
    offline.source.refuse();
    await settle();
    assert.deepEqual(offline.seen, [["error", { message: "the server cannot be reached" }]]);
  });

  test("a passing failure (the route answers a stream now) opens the stream once more, not twice", async () => {
    const ok = () => new Response("", { status: 200, headers: { "Content-Type": "text/event-stream" } });
    const { seen, EventSource, fetch } = openStream({ fetch: fakeFetch(ok(), ok()) });
    EventSource.opened[0].refuse();
    await settle();
    assert.equal(EventSource.opened.length, 2);
    assert.equal(fetch.calls[0].init.signal.aborted, true, "the asking request is not read to its end");
    EventSource.opened[1].refuse();
    await settle();
    assert.equal(EventSource.opened.length, 2);
    assert.deepEqual(seen, [["error", { message: "the reply stream could not be opened" }]]);
  });

  test("after close() nothing more comes: neither late events nor the answer of a pending check", async () => {
    const { stream, seen, source } = openStream({ fetch: fakeFetch(jsonResponse(404, { message: "gone" })) });
    source.refuse();
    stream.close();
    await settle();
    assert.deepEqual(seen, []);

    const other = openStream();
    other.stream.close();
    assert.equal(other.source.closed, true);
    other.source.dispatchEvent(new MessageEvent("message", { data: '{"content": "late"}' }));
    assert.deepEqual(other.seen, []);
  });

  test("events whose data is not JSON are skipped", () => {
    const { seen, source } = openStream();
    source.send("message", "{not json", 1);
    source.send("message", { content: "ok" }, 2);
    assert.deepEqual(seen, [["token", { content: "ok" }]]);
  });

  test("a Reply fed by the stream follows it: queued, searching, reading, streaming, done", () => {
    const { stream, source } = openStream();
    const reply = new Reply(CHAT, "internet");
    const statuses = [];
    for (const type of EVERY_EVENT) {
      stream.addEventListener(type, (event) => {
        reply.receive(type, event.data);
        statuses.push(reply.reconnecting ? "reconnecting" : reply.status);
      });
    }
    const sources = [{ n: 1, title: "Volcano", url: "https://example.org/v", snippet: "" }];
    source.send("start", { message_id: "m2", mode: "internet" }, 1);
    source.send("search", { query: "volcano" }, 2);
    source.send("sources", { sources }, 3);
    source.send("queued", { position: 1 }, 4);
    source.send("message", { content: "Every 47" }, 5);
    source.drop();
    source.reconnect();
    source.send("message", { content: " minutes." }, 6);
    const saved = { ...SAVED, message: "Every 47 minutes.", sources, citations: [{ start: 0, end: 17, n: 1 }] };
    source.send("done", { message: saved, finish_reason: "stop" }, 7);
    assert.deepEqual(statuses, [
      "waiting",
      "searching",
      "reading",
      "queued",
      "streaming",
      "reconnecting",
      "streaming",
      "done",
    ]);
    assert.equal(reply.text, "Every 47 minutes.");
    assert.equal(reply.messageId, "m2");
    assert.deepEqual(reply.sources, sources);
    assert.equal(reply.phase, "done");
    assert.equal(reply.active, false);
  });
});
