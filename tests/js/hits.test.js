/* chatapi/static/hits.js: the message search's pure parts (queries, marked snippets, pages, the URL hash). */
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  canSearch,
  terms,
  hashFor,
  MAX_OFFSET,
  markedParts,
  PAGE_SIZE,
  parseHash,
  SearchResults,
} from "../../chatapi/static/hits.js";

/** The pieces as a string, with [marked] pieces in brackets. */
function shown(parts) {
  return parts.map((part) => (part.marked ? `[${part.text}]` : part.text)).join("");
}

describe("markedParts", () => {
  test("marks the highlighted words, end exclusive, and keeps the rest as text", () => {
    const parts = markedParts("the red fox and the red hen", [
      { start: 4, end: 7 },
      { start: 20, end: 23 },
    ]);
    assert.deepEqual(parts, [
      { text: "the ", marked: false },
      { text: "red", marked: true },
      { text: " fox and the ", marked: false },
      { text: "red", marked: true },
      { text: " hen", marked: false },
    ]);
  });

  test("a highlight at the start, at the end, the whole snippet; none", () => {
    assert.equal(shown(markedParts("café au lait", [{ start: 0, end: 4 }])), "[café] au lait");
    assert.equal(shown(markedParts("café au lait", [{ start: 8, end: 12 }])), "café au [lait]");
    assert.deepEqual(markedParts("lait", [{ start: 0, end: 4 }]), [{ text: "lait", marked: true }]);
    assert.deepEqual(markedParts("lait", []), [{ text: "lait", marked: false }]);
    assert.deepEqual(markedParts("", []), []);
  });

  test("offsets count code points: an emoji (two UTF-16 units) is one", () => {
    // "🌉" is astral: "🌉".length is 2 in JS, but one character to the server (Python).
    const snippet = "🌉 Die Brücke über 𝔣luß";
    const parts = markedParts(snippet, [
      { start: 6, end: 12 },
      { start: 18, end: 22 },
    ]);
    assert.equal(shown(parts), "🌉 Die [Brücke] über [𝔣luß]");
    assert.equal(parts.map((part) => part.text).join(""), snippet);
  });

  test("non-ASCII letters and combining marks are cut where the server said", () => {
    // "e" + U+0301 (combining acute) is two code points; the server counts both.
    const snippet = "un cafe\u0301 noir, ΑΘΗΝΑ";
    assert.equal(shown(markedParts(snippet, [{ start: 3, end: 8 }])), "un [cafe\u0301] noir, ΑΘΗΝΑ");
    assert.equal(shown(markedParts(snippet, [{ start: 15, end: 20 }])), "un cafe\u0301 noir, [ΑΘΗΝΑ]");
  });

  test("offsets past the snippet are cut to it; overlaps are cut; empty, reversed and broken ones skipped", () => {
    assert.equal(shown(markedParts("abc def", [{ start: 4, end: 99 }])), "abc [def]");
    assert.equal(shown(markedParts("abc def", [{ start: -3, end: 3 }])), "[abc] def");
    assert.equal(
      shown(
        markedParts("abc def", [
          { start: 0, end: 3 },
          { start: 2, end: 5 },
        ]),
      ),
      "[abc][ d]ef",
    );
    assert.equal(
      shown(
        markedParts("abc def", [
          { start: 2, end: 2 },
          { start: 5, end: 4 },
          { start: "x", end: 3 },
          null,
          { start: 1.5, end: 3 },
        ]),
      ),
      "abc def",
    );
    assert.equal(shown(markedParts("abc", null)), "abc");
    assert.equal(shown(markedParts(null, [{ start: 0, end: 1 }])), "");
  });
});

test("canSearch: 1 to 500 characters (code points) with a letter or digit", () => {
  assert.equal(canSearch("fox"), true);
  assert.equal(canSearch("Brücke"), true);
  assert.equal(canSearch("東京"), true);
  assert.equal(canSearch("42"), true);
  assert.equal(canSearch('"red fox"'), true);
  assert.equal(canSearch(""), false);
  assert.equal(canSearch("?!"), false);
  assert.equal(canSearch('""'), false);
  assert.equal(canSearch("🌉"), false);
  assert.equal(canSearch("a".repeat(500)), true);
  assert.equal(canSearch("a".repeat(501)), false);
  assert.equal(canSearch("🌉".repeat(499) + "a"), true); // 1,000 UTF-16 units, 500 characters
  assert.equal(canSearch(null), false);
});

test("canSearch: at most 32 words and phrases, counted as the server parses them", () => {
  const words = (n) => Array.from({ length: n }, (_, i) => `w${i}`).join(" ");
  assert.equal(canSearch(words(32)), true);
  assert.equal(canSearch(words(33)), false);
  assert.equal(canSearch(words(32) + " W0 w0 ?! -- e-mail"), false); // e-mail is one more; repeats and marks-only not
  assert.equal(canSearch(words(31) + ' "a b c d e f"'), true); // a phrase is one
  assert.deepEqual(terms('Fox fox "red  fox" "red fox" e-mail ?! "unclosed one'), ["fox", "red fox", "e mail", "unclosed one"]);
  assert.deepEqual(terms("नमस्ते"), ["नमस्ते"]); // vowel signs and the virama belong to the word
});

/** A hit as GET /search gives it: a message's, or (no message id) a chat name's. */
function hit(messageId, chat = "c1") {
  return {
    chat_id: chat,
    chat_name: "A chat",
    conversation_id: messageId,
    role: messageId ? "Human" : null,
    created_at: "2026-12-06T01:00:00Z",
    snippet: "text",
    highlights: [],
  };
}

describe("SearchResults", () => {
  test("keeps the messages, counts the names before them, and pages on", () => {
    const results = new SearchResults("fox");
    assert.equal(results.more, false);
    assert.equal(results.messageTotal, null);
    const first = [hit(null, "c1"), hit(null, "c2"), ...Array.from({ length: PAGE_SIZE - 2 }, (_, i) => hit(`m${i}`))];
    results.take(first, 45);
    assert.equal(results.messages.length, PAGE_SIZE - 2);
    assert.equal(results.names, 2);
    assert.equal(results.offset, PAGE_SIZE);
    assert.equal(results.messageTotal, 43);
    assert.equal(results.more, true);
    assert.equal(results.onlyNames, false);
    results.take(
      Array.from({ length: 5 }, (_, i) => hit(`n${i}`)),
      45,
    );
    assert.equal(results.messages.length, PAGE_SIZE + 3);
    assert.equal(results.messages[PAGE_SIZE - 2].conversation_id, "n0");
    assert.equal(results.offset, PAGE_SIZE + 5);
    assert.equal(results.more, true);
  });

  test("a page of names only: the messages' count is not known until one comes", () => {
    const results = new SearchResults("notes");
    results.take(
      Array.from({ length: PAGE_SIZE }, (_, i) => hit(null, `c${i}`)),
      PAGE_SIZE + 3,
    );
    assert.equal(results.onlyNames, true);
    assert.equal(results.messageTotal, null);
    results.take([hit("m1"), hit("m2"), hit("m3")], PAGE_SIZE + 3);
    assert.equal(results.onlyNames, false);
    assert.equal(results.more, false);
    assert.equal(results.messageTotal, 3);
  });

  test("nothing found; names only; no total sent", () => {
    const none = new SearchResults("zzz");
    none.take([], 0);
    assert.deepEqual([none.more, none.onlyNames, none.messageTotal], [false, false, 0]);
    const names = new SearchResults("notes");
    names.take([hit(null)], 1);
    assert.deepEqual([names.more, names.onlyNames, names.messageTotal], [false, false, 0]);
    const headless = new SearchResults("fox");
    headless.take([hit("m1")], null); // a short page without X-Total-Count: the last
    assert.deepEqual([headless.more, headless.messageTotal], [false, 1]);
  });

  test("stops where the server's offset does", () => {
    const results = new SearchResults("the");
    results.offset = MAX_OFFSET;
    results.take([hit("m1")], 50_000);
    assert.equal(results.more, false);
  });
});

test("hashFor and parseHash: a chat, and a message in it", () => {
  const chat = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
  const message = "9c4b1f2e-0d3a-4b5c-8e7f-6a5b4c3d2e1f";
  assert.equal(hashFor(chat), `#chat=${chat}`);
  assert.equal(hashFor(chat, message), `#chat=${chat}&message=${message}`);
  assert.equal(hashFor(null, message), "");
  assert.deepEqual(parseHash(`#chat=${chat}`), { chatId: chat, messageId: null });
  assert.deepEqual(parseHash(`#chat=${chat}&message=${message}`), { chatId: chat, messageId: message });
  assert.deepEqual(parseHash(hashFor(chat, message)), { chatId: chat, messageId: message });
  for (const bad of ["", "#", "#chat=", `#message=${message}`, `#chat=${chat}&message=`, "#chat=a<b", null]) {
    assert.deepEqual(parseHash(bad), { chatId: null, messageId: null }, String(bad));
  }
});
