/* What the page knows: the chats, the open chat and its messages, the replies being written, and what it
 * keeps in localStorage (settings, and the replies that were streaming when the page went away).
 *
 * No DOM and no requests: main.js changes the state, views.js draws it. Storage is a parameter, so that
 * tests can hand in their own.
 */

export const DEFAULT_NAME = "New chat";

export const KEYS = {
  internet: "chatapi.internet",
  pending: "chatapi.pending", // chats whose reply was streaming when the page went away
  maxTokens: "chatapi.max_tokens",
  temperature: "chatapi.temperature",
  signInWith: "chatapi.sign_in_with", // "password" or "key": how the person signed in last, offered first
};

/** A new chat's name: the first line of its first message, shortened. */
export function titleFrom(text) {
  const line = text.trim().split("\n")[0].trim();
  return line.length > 60 ? `${line.slice(0, 57).trimEnd()}…` : line || DEFAULT_NAME;
}

/** localStorage (or any Storage), which may be switched off or full: the page works without it. */
export class Store {
  constructor(storage) {
    this.storage = storage;
  }

  get(key) {
    try {
      return this.storage.getItem(key);
    } catch {
      return null;
    }
  }

  /** Remember a value; null or "" forgets it. */
  set(key, value) {
    try {
      if (value === null || value === "") this.storage.removeItem(key);
      else this.storage.setItem(key, value);
    } catch {
      /* not remembered, that is all */
    }
  }
}

/** The chats whose reply was streaming, in which mode and, for a regenerate, which message it replaces, so that
 * a reloaded page joins them again. Stored as {chat id: mode} or {chat id: {mode, replaces}}. */
export class PendingReplies {
  constructor(store) {
    this.store = store;
  }

  all() {
    try {
      const pending = JSON.parse(this.store.get(KEYS.pending) || "{}");
      return pending && typeof pending === "object" && !Array.isArray(pending) ? pending : {};
    } catch {
      return {};
    }
  }

  /** The chat's pending reply as {mode: "local"|"internet", replaces: message id or null}, or undefined. */
  get(chatId) {
    const entry = this.all()[chatId];
    const { mode, replaces = null } = typeof entry === "string" ? { mode: entry } : entry || {};
    if (mode !== "local" && mode !== "internet") return undefined;
    return { mode, replaces: typeof replaces === "string" ? replaces : null };
  }

  remember(chatId, mode, replaces = null) {
    const entry = replaces ? { mode, replaces } : mode;
    this.store.set(KEYS.pending, JSON.stringify({ ...this.all(), [chatId]: entry }));
  }

  forget(chatId) {
    const pending = this.all();
    if (!(chatId in pending)) return;
    delete pending[chatId];
    this.store.set(KEYS.pending, Object.keys(pending).length ? JSON.stringify(pending) : null);
  }
}

/** One Assistant reply as its stream tells it: what it is doing, its text so far, and how it ended. */
export class Reply {
  constructor(chatId, mode, { replaces = null } = {}) {
    this.chatId = chatId;
    this.mode = mode; // "local" or "internet"
    this.replaces = replaces; // regenerate: the id of the Assistant message it takes the place of when saved
    this.status = "connecting"; // waiting, queued, searching, reading, streaming, done, error
    this.reconnecting = false;
    this.messageId = null; // the id the saved reply will have (from `start`)
    this.model = null; // the id of the model that writes it (from `start`; null from a server that does not say)
    this.text = "";
    this.query = null;
    this.sources = null;
    this.warning = null;
    this.position = null;
    this.done = null; // the data of `done`
    this.error = null;
  }

  get active() {
    return this.status !== "done" && this.status !== "error";
  }

  /** The saved message, once `done` brought it (none when nothing was written). */
  get saved() {
    return (this.done && this.done.message) || null;
  }

  /** A regenerate that ended with a new message: the one it replaces is gone. */
  get replaced() {
    return Boolean(this.replaces && this.saved && this.saved.id !== this.replaces);
  }

  /** What the page shows: streaming, done, stopped (cancelled) or error. */
  get phase() {
    if (this.status === "error") return "error";
    if (this.status === "done") return this.done && this.done.finish_reason === "cancelled" ? "stopped" : "done";
    return "streaming";
  }

  /** Take in one of the stream's events (ReplyStream's names and data). */
  receive(kind, data) {
    if (kind === "reconnecting") {
      this.reconnecting = true;
      return;
    }
    this.reconnecting = false;
    switch (kind) {
      case "start":
        this.messageId = data.message_id;
        this.mode = data.mode || this.mode;
        this.model = data.model || this.model;
        if (this.status === "connecting") this.status = "waiting";
        break;
      case "queued":
        this.position = data.position;
        this.status = "queued";
        break;
      case "search":
        this.query = data.query;
        this.status = "searching";
        break;
      case "sources":
        this.sources = Array.isArray(data.sources) ? data.sources : [];
        this.status = "reading";
        break;
      case "warning":
        this.warning = String(data.message ?? "");
        break;
      case "token":
        this.text += String(data.content ?? "");
        this.status = "streaming";
        break;
      case "done":
        this.finish(data);
        break;
    }
  }

  /** The reply ended: `data` is `done`'s ({message, finish_reason, usage, timings}); message may be null. */
  finish(data) {
    this.status = "done";
    this.reconnecting = false;
    this.done = data;
    const saved = this.saved;
    if (saved) this.text = saved.message; // the saved text: the pieces, trimmed
    if (saved && Array.isArray(saved.sources)) this.sources = saved.sources;
  }

  fail(message) {
    this.status = "error";
    this.reconnecting = false;
    this.error = message;
  }
}

/** The chats, the open chat, its messages, and the replies being written (one per chat at most). */
export class ChatState {
  constructor() {
    this.chats = []; // the list in the sidebar, most recently updated first
    this.chat = null; // the open chat
    this.messages = []; // its conversations, oldest first
    this.query = ""; // the chat list's search
    this.sending = false;
    this.renaming = false;
    this.replies = new Map(); // chat id -> its Reply while it is written
    this.models = null; // GET /models: what a chat may pick (null until known, or when the server lists none)
    // Answers can come back out of order: only the latest request of each kind is used.
    this.openSeq = 0;
    this.listSeq = 0;
  }

  isOpen(chatId) {
    return Boolean(this.chat && this.chat.id === chatId);
  }

  /** The open chat's reply while it is being written, else null. */
  activeReply(chatId = this.chat && this.chat.id) {
    const reply = chatId ? this.replies.get(chatId) : null;
    return reply && reply.active ? reply : null;
  }

  /** Open a chat (or none); `known` is its representation if the caller has it. A number that tells
   * whether a later open() came meanwhile (see isLatestOpen). */
  open(chatId, known = null) {
    this.chat = chatId ? known || this.chats.find((chat) => chat.id === chatId) || { id: chatId, name: "" } : null;
    this.messages = [];
    return ++this.openSeq;
  }

  isLatestOpen(seq) {
    return seq === this.openSeq;
  }

  /** The chat list as the server gave it; the open chat's representation is taken from it when it is in it. */
  setChats(chats) {
    this.chats = chats;
    const open = this.chat && chats.find((chat) => chat.id === this.chat.id);
    if (open) this.chat = open;
  }

  /** A chat created or changed: first in the list, and the open chat's representation if it is that one. */
  putChat(chat) {
    this.chats = [chat, ...this.chats.filter((other) => other.id !== chat.id)];
    if (this.isOpen(chat.id)) this.chat = chat;
  }

  removeChat(chatId) {
    this.chats = this.chats.filter((chat) => chat.id !== chatId);
  }

  lastMessage() {
    return this.messages[this.messages.length - 1] || null;
  }

  /** A message saved in the open chat (once: a reply's `done` and a reload can both bring it). */
  addMessage(message) {
    if (!this.messages.some((known) => known.id === message.id)) this.messages.push(message);
  }

  removeMessage(messageId) {
    this.messages = this.messages.filter((message) => message.id !== messageId);
  }

  /** How many messages come after this one (-1 when it is not in the open chat). */
  countAfter(messageId) {
    const index = this.messages.findIndex((message) => message.id === messageId);
    return index < 0 ? -1 : this.messages.length - index - 1;
  }

  /** An edited message: it takes its old place, and what came after it is gone. */
  replaceFrom(message) {
    const index = this.messages.findIndex((known) => known.id === message.id);
    if (index >= 0) this.messages = [...this.messages.slice(0, index), message];
  }
}
