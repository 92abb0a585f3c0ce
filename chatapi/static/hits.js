/* What the chat list's message search (search.js) works out without a DOM or a request: which queries GET /search
 * takes, a snippet cut into marked and unmarked pieces from its highlights, the search's pages as they come in, and
 * the page's URL hash (#chat=<id>, or #chat=<id>&message=<id> for a message found).
 */

export const MAX_QUERY = 500; // GET /search's longest q
export const PAGE_SIZE = 20; // hits asked for at a time (More asks for the next)
export const MAX_OFFSET = 10000; // GET /search's largest offset
export const MAX_TERMS = 32; // GET /search's most words and "phrases"
const WORDS = /[\p{L}\p{M}\p{N}\p{Co}]+/gu; // what a word is made of (chatapi/snippets.py)

/** The words and "phrases" GET /search reads in a query, as chatapi/snippets.py parses it: white space separates
 * them, double quotes hold a phrase (an unclosed one runs to the end), and one with no letter, mark or digit is
 * left out; one of the same words as another counts once. */
export function terms(query) {
  const found = new Set();
  String(query).split('"').forEach((part, i) => {
    for (const term of i % 2 ? [part] : part.split(/\s+/)) {
      const words = term.match(WORDS);
      if (words) found.add(words.join(" ").toLowerCase());
    }
  });
  return [...found];
}

/** Whether GET /search takes this (trimmed) query: 1 to 500 characters, with 1 to 32 words or phrases. */
export function canSearch(query) {
  if (typeof query !== "string" || !query || Array.from(query).length > MAX_QUERY) return false;
  const count = terms(query).length;
  return count >= 1 && count <= MAX_TERMS;
}

/** A snippet as pieces, in order, `{text, marked}`: `highlights` are `{start, end}` offsets into it in Unicode code
 * points (the server's Python string indices: an emoji is one, not two as in a JS string), end exclusive, in order.
 * Offsets are cut to the snippet, and a highlight that overlaps the one before to what follows it; one that is
 * then empty, or not a whole number, is skipped. */
export function markedParts(snippet, highlights) {
  const points = Array.from(String(snippet ?? ""));
  const parts = [];
  const push = (from, to, marked) => {
    if (to > from) parts.push({ text: points.slice(from, to).join(""), marked });
  };
  let at = 0;
  for (const highlight of Array.isArray(highlights) ? highlights : []) {
    const start = Math.max(at, Math.min(points.length, Number(highlight?.start)));
    const end = Math.min(points.length, Number(highlight?.end));
    if (!Number.isInteger(start) || !Number.isInteger(end) || end <= start) continue;
    push(at, start, false);
    push(start, end, true);
    at = end;
  }
  push(at, points.length, false);
  return parts;
}

/** The hits of one query, page after page. The server's list starts with the chats whose name matched
 * (`conversation_id` null), which the chat list shows already: only the messages are kept, and the messages'
 * total is the server's total less the names, known once a message came (the names all come before it) or the
 * list ended. */
export class SearchResults {
  constructor(query) {
    this.query = query;
    this.messages = []; // the message hits so far, in the server's order
    this.names = 0; // the name hits passed
    this.offset = 0; // the next page's offset
    this.total = null; // X-Total-Count: names and messages
  }

  /** Take the next page (the hits the server sent for `offset`) and the total it gave. */
  take(hits, total) {
    const page = Array.isArray(hits) ? hits : [];
    for (const hit of page) {
      if (hit && hit.conversation_id) this.messages.push(hit);
      else this.names += 1;
    }
    this.offset += page.length;
    if (Number.isInteger(total)) this.total = total;
    else if (page.length < PAGE_SIZE) this.total = this.offset; // no header: the short page was the last
  }

  /** Whether there are hits the server has not sent yet (and may: offset stops at MAX_OFFSET). */
  get more() {
    return this.total !== null && this.offset < this.total && this.offset <= MAX_OFFSET;
  }

  /** Only names so far, and more to come: the messages are on a later page. */
  get onlyNames() {
    return this.messages.length === 0 && this.more;
  }

  /** How many messages match, or null while only names came. */
  get messageTotal() {
    if (this.total === null) return null;
    if (this.messages.length === 0 && this.more) return null;
    return Math.max(this.messages.length, this.total - this.names);
  }
}

/** The page's hash for a chat, and a message in it: `#chat=<id>&message=<id>`; "" for none. */
export function hashFor(chatId, messageId = null) {
  if (!chatId) return "";
  const hash = `#chat=${encodeURIComponent(chatId)}`;
  return messageId ? `${hash}&message=${encodeURIComponent(messageId)}` : hash;
}

/** The chat and message a hash names (`#chat=<id>` or `#chat=<id>&message=<id>`); nulls for anything else. */
export function parseHash(hash) {
  const match = /^#chat=([0-9A-Za-z-]+)(?:&message=([0-9A-Za-z-]+))?$/.exec(hash || "");
  return match ? { chatId: match[1], messageId: match[2] || null } : { chatId: null, messageId: null };
}
