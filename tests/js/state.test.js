/* chatapi/static/state.js: what the page knows, with a Map standing in for localStorage. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ChatState,
  DEFAULT_NAME,
  KEYS,
  PendingReplies,
  Reply,
  Store,
  titleFrom,
} from "../../chatapi/static/state.js";
import { MemoryStorage } from "./fakes.js";

const CHAT = "c1";

describe("Reply", () => {
  test("starts connecting, takes the message id and mode from start", () => {
    const reply = new Reply(CHAT, "local");
    assert.equal(reply.status, "connecting");
    assert.equal(reply.active, true);
    assert.equal(reply.phase, "streaming");
    reply.receive("start", { chat_id: CHAT, message_id: "m2", mode: "internet", truncated: 0 });
    assert.deepEqual([reply.status, reply.messageId, reply.mode], ["waiting", "m2", "internet"]);
  });

  test("queued keeps the latest position; tokens add up; a warning is kept", () => {
    const reply = new Reply(CHAT, "local");
    reply.receive("queued", { position: 3 });
    assert.deepEqual([reply.status, reply.position], ["queued", 3]);
    reply.receive("queued", { position: 1 });
    assert.equal(reply.position, 1);
    reply.receive("warning", { message: "search failed: duckduckgo answered 202" });
    assert.equal(reply.warning, "search failed: duckduckgo answered 202");
    reply.receive("token", { content: "Hel" });
    reply.receive("token", { content: "lo" });
    reply.receive("token", {});
    assert.deepEqual([reply.status, reply.text], ["streaming", "Hello"]);
  });

  test("search and sources: what is searched and the numbered pages read", () => {
    const reply = new Reply(CHAT, "internet");
    reply.receive("search", { query: "volcano" });
    assert.deepEqual([reply.status, reply.query], ["searching", "volcano"]);
    const sources = [{ n: 1, title: "Volcano", url: "https://example.org/", snippet: "47 minutes" }];
    reply.receive("sources", { sources });
    assert.deepEqual([reply.status, reply.sources], ["reading", sources]);
    reply.receive("sources", { sources: "not a list" });
    assert.deepEqual(reply.sources, []);
  });

  test("reconnecting is shown until the next event", () => {
    const reply = new Reply(CHAT, "local");
    reply.receive("token", { content: "a" });
    reply.receive("reconnecting", { attempt: 1 });
    assert.equal(reply.reconnecting, true);
    assert.equal(reply.status, "streaming");
    reply.receive("token", { content: "b" });
    assert.equal(reply.reconnecting, false);
    assert.equal(reply.text, "ab");
  });

  test("done shows the saved text (trimmed) and its sources; cancelled is stopped", () => {
    const reply = new Reply(CHAT, "internet");
    reply.receive("sources", { sources: [{ n: 1, url: "https://a.example/" }] });
    reply.receive("token", { content: " Paris. " });
    const saved = { id: "m2", message: "Paris.", sources: [{ n: 1, url: "https://b.example/" }] };
    reply.receive("done", { message: saved, finish_reason: "stop" });
    assert.deepEqual([reply.status, reply.phase, reply.active], ["done", "done", false]);
    assert.equal(reply.text, "Paris.");
    assert.equal(reply.saved, saved);
    assert.deepEqual(reply.sources, saved.sources);

    const stopped = new Reply(CHAT, "local");
    stopped.receive("token", { content: "Par" });
    stopped.finish({ message: null, finish_reason: "cancelled" });
    assert.deepEqual([stopped.phase, stopped.saved, stopped.text], ["stopped", null, "Par"]);
  });

  test("a regenerate has replaced its message once a new one is saved; not when nothing was written", () => {
    const reply = new Reply(CHAT, "local", { replaces: "old" });
    assert.equal(reply.replaced, false);
    reply.finish({ message: { id: "new", message: "Again." }, finish_reason: "stop" });
    assert.equal(reply.replaced, true);

    const empty = new Reply(CHAT, "local", { replaces: "old" });
    empty.finish({ message: null, finish_reason: "cancelled" });
    assert.equal(empty.replaced, false);
    // Found by a reconnect that came too late: the chat's last reply is still the old one.
    const late = new Reply(CHAT, "local", { replaces: "old" });
    late.finish({ message: { id: "old", message: "Before." }, finish_reason: null });
    assert.equal(late.replaced, false);
    assert.equal(new Reply(CHAT, "local").replaced, false);
  });

  test("fail ends it with the reason", () => {
    const reply = new Reply(CHAT, "local");
    reply.receive("reconnecting", { attempt: 5 });
    reply.fail("lost the connection to the server");
    assert.deepEqual([reply.phase, reply.active, reply.reconnecting], ["error", false, false]);
    assert.equal(reply.error, "lost the connection to the server");
  });
});

describe("PendingReplies", () => {
  test("remembers each chat's mode until the reply settles; the key goes when none is left", () => {
    const storage = new MemoryStorage();
    const pending = new PendingReplies(new Store(storage));
    pending.remember("a", "local");
    pending.remember("b", "internet");
    pending.remember("r", "local", "m2"); // a regenerate of message m2
    assert.deepEqual(JSON.parse(storage.getItem(KEYS.pending)), {
      a: "local",
      b: "internet",
      r: { mode: "local", replaces: "m2" },
    });
    assert.deepEqual(pending.get("b"), { mode: "internet", replaces: null });
    assert.deepEqual(pending.get("r"), { mode: "local", replaces: "m2" });
    assert.equal(pending.get("c"), undefined);
    pending.forget("r");
    pending.forget("a");
    pending.forget("c");
    assert.deepEqual(pending.all(), { b: "internet" });
    pending.forget("b");
    assert.equal(storage.getItem(KEYS.pending), null);
  });

  test("whatever another version of the page left is read as nothing, not as a crash", () => {
    const storage = new MemoryStorage();
    const pending = new PendingReplies(new Store(storage));
    for (const left of ["{not json", "null", "[1,2]", '"local"']) {
      storage.setItem(KEYS.pending, left);
      assert.deepEqual(pending.all(), {}, left);
    }
    const odd = { a: "carrier pigeon", b: { mode: "x" }, c: { mode: "local", replaces: 3 } };
    storage.setItem(KEYS.pending, JSON.stringify(odd));
    assert.equal(pending.get("a"), undefined);
    assert.equal(pending.get("b"), undefined);
    assert.deepEqual(pending.get("c"), { mode: "local", replaces: null });
  });

  test("works without storage (switched off, or full)", () => {
    const broken = {
      getItem() {
        throw new Error("SecurityError");
      },
      setItem() {
        throw new Error("QuotaExceededError");
      },
      removeItem() {
        throw new Error("SecurityError");
      },
    };
    for (const storage of [broken, null]) {
      const pending = new PendingReplies(new Store(storage));
      pending.remember("a", "local");
      assert.equal(pending.get("a"), undefined);
      pending.forget("a");
    }
  });
});

describe("Store", () => {
  test("null and the empty string forget a value", () => {
    const storage = new MemoryStorage();
    const store = new Store(storage);
    store.set(KEYS.maxTokens, "24");
    assert.equal(store.get(KEYS.maxTokens), "24");
    store.set(KEYS.maxTokens, "");
    assert.equal(storage.getItem(KEYS.maxTokens), null);
    store.set(KEYS.internet, "1");
    store.set(KEYS.internet, null);
    assert.equal(store.get(KEYS.internet), null);
  });
});

describe("ChatState", () => {
  const chat = (id, name = id) => ({ id, name, updated_at: "2024-01-01T00:00:00.000Z" });

  test("open() names the chat from the list or as given, and tells a later open apart", () => {
    const state = new ChatState();
    state.setChats([chat("a", "Alpha"), chat("b")]);
    const first = state.open("a");
    assert.equal(state.chat.name, "Alpha");
    assert.equal(state.isOpen("a"), true);
    const second = state.open("z");
    assert.deepEqual(state.chat, { id: "z", name: "" });
    assert.equal(state.isLatestOpen(first), false);
    assert.equal(state.isLatestOpen(second), true);
    state.open(null);
    assert.equal(state.chat, null);
    assert.equal(state.isOpen("a"), false);
  });

  test("the list refreshes the open chat; a created or renamed chat goes first", () => {
    const state = new ChatState();
    state.open("a", chat("a", "old name"));
    state.messages = [{ id: "m1" }];
    state.setChats([chat("b"), chat("a", "new name")]);
    assert.equal(state.chat.name, "new name");
    assert.equal(state.messages.length, 1);
    state.putChat(chat("c"));
    state.putChat(chat("a", "newer name"));
    assert.deepEqual(
      state.chats.map((c) => c.name),
      ["newer name", "c", "b"],
    );
    assert.equal(state.chat.name, "newer name");
    state.removeChat("c");
    assert.deepEqual(
      state.chats.map((c) => c.id),
      ["a", "b"],
    );
  });

  test("a message comes in once, whether from done or from a reload", () => {
    const state = new ChatState();
    state.open("a");
    assert.equal(state.lastMessage(), null);
    state.addMessage({ id: "m1", role: "Human" });
    state.addMessage({ id: "m2", role: "Assistant" });
    state.addMessage({ id: "m2", role: "Assistant" });
    assert.deepEqual(
      state.messages.map((m) => m.id),
      ["m1", "m2"],
    );
    assert.equal(state.lastMessage().id, "m2");
  });

  test("an edited message keeps its place and what followed it goes", () => {
    const state = new ChatState();
    state.open("a");
    state.messages = ["m1", "m2", "m3", "m4"].map((id) => ({ id, message: id }));
    assert.equal(state.countAfter("m2"), 2);
    assert.equal(state.countAfter("m4"), 0);
    assert.equal(state.countAfter("nope"), -1);
    state.replaceFrom({ id: "m2", message: "edited" });
    assert.deepEqual(state.messages, [
      { id: "m1", message: "m1" },
      { id: "m2", message: "edited" },
    ]);
    state.replaceFrom({ id: "elsewhere", message: "x" });
    assert.equal(state.messages.length, 2);
    state.removeMessage("m1");
    assert.deepEqual(
      state.messages.map((m) => m.id),
      ["m2"],
    );
  });

  test("activeReply is the open (or named) chat's reply while it is written", () => {
    const state = new ChatState();
    assert.equal(state.activeReply(), null);
    state.open("a");
    const reply = new Reply("a", "local");
    state.replies.set("a", reply);
    assert.equal(state.activeReply(), reply);
    assert.equal(state.activeReply("b"), null);
    reply.fail("no");
    assert.equal(state.activeReply(), null);
  });
});

test("titleFrom: a chat is named after the first line of its first message", () => {
  assert.equal(titleFrom("  What is the capital of France?\nAnd of Italy?"), "What is the capital of France?");
  assert.equal(titleFrom("   \n  "), DEFAULT_NAME);
  assert.equal(titleFrom("word ".repeat(30)), `${"word ".repeat(11)}wo…`); // 57 characters and an ellipsis
  assert.equal(titleFrom(`${"a".repeat(56)} ${"b".repeat(10)}`), `${"a".repeat(56)}…`); // no space before the ellipsis
});
