/* The chat list's search box finds messages too: GET /search with what was typed, under the chats whose name
 * matched (main.js lists those, GET /chats/?q=), a "Messages" section of hits: each one's chat, who wrote it, when,
 * and its snippet with the matched words in <mark>. A hit is a link to #chat=<id>&message=<id>; clicking it opens
 * the chat at that message (main.js). More asks for the next page.
 *
 * Text from the server goes into the page as text (views.node), never as HTML; the marks are elements made here
 * from the hit's highlights (hits.js).
 */
import { apiPage } from "./api.js";
import { canSearch, hashFor, markedParts, PAGE_SIZE, SearchResults } from "./hits.js";
import { node, relativeTime, sentence } from "./views.js";

const $ = (id) => document.getElementById(id);

const el = {
  chatsTitle: $("chats-title"),
  section: $("search-results"),
  count: $("search-count"),
  hits: $("search-hits"),
  more: $("search-more"),
};

const MAX_SKIPPED_PAGES = 10; // pages of chat names only that one search reads through to reach the messages

let current = null; // the search shown: {results: SearchResults, controller, loading, error}
let drawnFor = null; // the search whose hits the list holds (More adds to them)
let hooks = { openHit() {} }; // openHit(chatId, messageId): open the chat at the message

/** Wire More; `openHit(chatId, messageId)` runs when a hit is chosen. */
export function connectSearch(appHooks) {
  hooks = { ...hooks, ...appHooks };
  el.more.addEventListener("click", () => loadMore());
}

/** Search the messages for `query` (the box's text, trimmed), in place of the search before: its request, if
 * still out, is aborted, and its answer would be dropped anyway. An empty query (or one GET /search refuses:
 * no letter or digit) hides the section. */
export function searchMessages(query) {
  if (current) current.controller.abort();
  current = null;
  el.chatsTitle.hidden = !query;
  if (!canSearch(query)) {
    draw();
    return Promise.resolve();
  }
  current = { results: new SearchResults(query), controller: new AbortController(), loading: false, error: null };
  return load(current);
}

/** The next page of the search shown. From More, the focus goes on to the first of the new hits (More may go
 * away under it), where the keyboard reads on. */
async function loadMore() {
  const search = current;
  if (!search || search.loading || !search.results.more) return;
  const before = search.results.messages.length;
  const focused = document.activeElement === el.more;
  await load(search);
  if (search !== current || !focused) return;
  el.hits.children[before]?.querySelector("a")?.focus();
}

/** Ask for pages until one has messages (the chats whose name matched come first) or the hits end. */
async function load(search) {
  search.loading = true;
  search.error = null;
  draw();
  try {
    let pages = 0;
    do {
      const params = new URLSearchParams({ q: search.results.query, limit: PAGE_SIZE, offset: search.results.offset });
      const { items, total } = await apiPage(`/search?${params}`, { signal: search.controller.signal });
      if (search !== current) return;
      search.results.take(items, total);
      pages += 1;
    } while (search.results.onlyNames && pages < MAX_SKIPPED_PAGES);
  } catch (error) {
    if (search !== current) return; // aborted, or answered after newer typing: not shown
    search.error = error;
  }
  search.loading = false;
  draw();
}

/** The section as the search shown stands: hidden with none; else its count (or that it is searching, or why
 * it failed), its hits and More. */
function draw() {
  const search = current;
  el.section.hidden = !search;
  if (!search) {
    el.count.textContent = "";
    el.hits.replaceChildren();
    drawnFor = null;
    el.more.hidden = true;
    return;
  }
  const { results } = search;
  el.count.textContent = countText(search);
  if (drawnFor !== search) el.hits.replaceChildren(); // another search's hits
  drawnFor = search;
  el.hits.append(...results.messages.slice(el.hits.children.length).map(hitItem));
  // Not disabled while a page loads (that would drop the focus): loadMore asks once at a time.
  el.more.hidden = !results.more;
  el.section.setAttribute("aria-busy", String(search.loading));
}

function countText({ results, loading, error }) {
  if (error) return sentence(`Could not search the messages: ${error.message}.`);
  const total = results.messageTotal;
  if (total === null) return loading ? "Searching…" : "Many chats' names match: More looks further for messages.";
  if (total === 0) return loading ? "Searching…" : "No message matches.";
  const shown = results.messages.length;
  const count = total === 1 ? "1 message" : `${total.toLocaleString()} messages`;
  return shown < total ? `${count}, ${shown.toLocaleString()} shown` : count;
}

/** Who wrote a message, as the page says it. */
function roleName(role) {
  if (role === "Human") return "You";
  if (role === "Assistant") return "Assistant";
  return role ? String(role) : "";
}

/** One hit: a link to the message, with its chat's name, who wrote it and when, and the snippet marked. */
function hitItem(hit) {
  const item = node("li", "search-hit");
  const link = node("a", "hit-open");
  link.href = hashFor(hit.chat_id, hit.conversation_id);
  const head = node("span", "hit-head");
  head.append(node("span", "hit-chat", hit.chat_name), node("span", "hit-time", relativeTime(hit.created_at)));
  const snippet = node("span", "hit-snippet");
  const who = roleName(hit.role);
  if (who) snippet.append(node("span", "hit-role", `${who}: `));
  for (const part of markedParts(hit.snippet, hit.highlights)) {
    snippet.append(part.marked ? node("mark", null, part.text) : part.text);
  }
  link.append(head, snippet);
  link.addEventListener("click", (event) => {
    // A new tab or window (a modifier, the middle button) follows the link; a plain click opens it here.
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    hooks.openHit(hit.chat_id, hit.conversation_id);
  });
  link.addEventListener("keydown", (event) => {
    // Up and down move between the hits, as between the chats.
    const step = { ArrowDown: "nextElementSibling", ArrowUp: "previousElementSibling" }[event.key];
    const next = step && item[step];
    if (!next) return;
    event.preventDefault();
    next.querySelector("a").focus();
  });
  item.append(link);
  return item;
}
