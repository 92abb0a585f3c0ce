/* chatapi's chat page: chats and messages over the JSON API, replies streamed over EventSource.
 *
 * Plain JavaScript, no build step. Every piece of text from the server or the user is put into
 * the page with textContent (never as HTML), and links are only made from http(s) URLs.
 */
(() => {
  "use strict";

  const DEFAULT_NAME = "New chat";
  const KEYS = {
    internet: "chatapi.internet",
    pending: "chatapi.pending", // chats whose reply was streaming when the page went away
    maxTokens: "chatapi.max_tokens",
    temperature: "chatapi.temperature",
  };
  const MAX_RECONNECTS = 5; // EventSource retries in a row without an event before the page gives up
  const ALERT_SECONDS = 20;

  const $ = (id) => document.getElementById(id);
  const el = {
    app: $("app"),
    sidebar: $("sidebar"),
    scrim: $("scrim"),
    openSidebar: $("open-sidebar"),
    closeSidebar: $("close-sidebar"),
    newChat: $("new-chat"),
    search: $("search"),
    chatList: $("chat-list"),
    chatListEmpty: $("chat-list-empty"),
    modelStatus: $("model-status"),
    modelLabel: $("model-label"),
    title: $("chat-title"),
    chatActions: $("chat-actions"),
    renameChat: $("rename-chat"),
    deleteChat: $("delete-chat"),
    alerts: $("alerts"),
    messages: $("messages"),
    emptyState: $("empty-state"),
    suggestions: $("suggestions"),
    messageList: $("message-list"),
    composer: $("composer"),
    input: $("message-input"),
    internet: $("internet"),
    maxTokens: $("max-tokens"),
    temperature: $("temperature"),
    send: $("send"),
    stop: $("stop"),
    confirmDialog: $("confirm-delete"),
    confirmName: $("confirm-name"),
    signIn: $("sign-in"),
    signInForm: $("sign-in-form"),
    signInKey: $("sign-in-key"),
    signInError: $("sign-in-error"),
    signInButton: $("sign-in-button"),
    signInAgain: $("sign-in-again"),
  };
  const pageParams = new URLSearchParams(location.search);

  const state = {
    chats: [],
    chat: null, // the selected chat
    messages: [], // its conversations, oldest first
    query: "",
    sending: false,
    renaming: false,
    selectSeq: 0,
    listSeq: 0,
  };
  const replies = new Map(); // chat id -> the Reply streaming into it

  // ---------------------------------------------------------------- the JSON API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** The server's error body ({code, status, message, errors?}) as one sentence. */
  function errorMessage(body, status) {
    if (body && typeof body === "object") {
      if (body.errors && typeof body.errors === "object") {
        const details = Object.entries(body.errors).map(([field, problems]) => `${field}: ${[].concat(problems).join(" ")}`);
        if (details.length) return details.join("; ");
      }
      if (body.message) return String(body.message);
    }
    return `the server answered ${status}`;
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }

  async function api(method, path, body) {
    const init = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    for (;;) {
      let response;
      try {
        response = await fetch(path, init);
      } catch {
        throw new ApiError(0, "the server cannot be reached");
      }
      const data = await readJson(response);
      if (response.status === 401) {
        // The server wants a key and did nothing: sign in, then send the same request again.
        await signIn();
        continue;
      }
      if (!response.ok) throw new ApiError(response.status, errorMessage(data, response.status));
      return data;
    }
  }

  // ---------------------------------------------------------------- signing in

  let signingIn = null; // the prompt on screen: every request that met a 401 waits for the same one
  let declined = false; // the person closed the prompt: no other opens until they ask (Sign in, bottom left)

  /** Ask for an API key and trade it for a session cookie (POST /session), which the server then accepts
   * from every request and stream of the page. Resolves once signed in; rejects if the prompt is closed. */
  function signIn() {
    if (declined) return Promise.reject(new ApiError(401, "an API key is needed"));
    if (!signingIn) {
      signingIn = new Promise((resolve, reject) => {
        showSignInError("");
        el.signInKey.value = "";
        el.signIn.returnValue = "";
        el.signIn.addEventListener(
          "close",
          () => {
            signingIn = null;
            if (el.signIn.returnValue === "signed-in") {
              resolve();
              return;
            }
            declined = true;
            el.signInAgain.hidden = false;
            reject(new ApiError(401, "an API key is needed"));
          },
          { once: true },
        );
        el.signIn.showModal();
        el.signInKey.focus();
      });
    }
    return signingIn;
  }

  async function submitKey() {
    const key = el.signInKey.value.trim();
    if (!key) return;
    el.signInButton.disabled = true;
    try {
      const response = await fetch("/session", {
        method: "POST",
        headers: { Accept: "application/json", "Content-Type": "application/json" },
        body: JSON.stringify({ key }),
      });
      if (response.ok) {
        el.signIn.close("signed-in");
        return;
      }
      const data = await readJson(response);
      showSignInError(response.status === 401 ? "That key is not valid." : `${errorMessage(data, response.status)}.`);
    } catch {
      showSignInError("The server cannot be reached.");
    } finally {
      el.signInButton.disabled = false;
    }
    el.signInKey.select();
  }

  /** The Sign in button, after the prompt was closed: ask again, then load what the page shows. */
  async function signInAgain() {
    declined = false;
    el.signInAgain.hidden = true;
    try {
      await signIn();
    } catch {
      return;
    }
    refreshChats();
    if (state.chat) selectChat(state.chat.id);
  }

  function showSignInError(message) {
    el.signInError.textContent = message;
    el.signInKey.setAttribute("aria-invalid", message ? "true" : "false");
  }

  // ---------------------------------------------------------------- small helpers

  function node(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined && text !== null) element.textContent = String(text);
    return element;
  }

  function icon(name) {
    return $(`icon-${name}`).content.firstElementChild.cloneNode(true);
  }

  function iconButton(name, label, onClick, extraClass = "") {
    const button = node("button", `icon-button ${extraClass}`.trim());
    button.type = "button";
    button.setAttribute("aria-label", label);
    button.title = label;
    button.append(icon(name));
    button.addEventListener("click", onClick);
    return button;
  }

  function parseTime(value) {
    const time = Date.parse(value);
    return Number.isNaN(time) ? null : new Date(time);
  }

  function relativeTime(value) {
    const date = parseTime(value);
    if (!date) return "";
    const seconds = (Date.now() - date.getTime()) / 1000;
    if (seconds < 60) return "just now";
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    if (seconds < 7 * 86400) return date.toLocaleDateString(undefined, { weekday: "long" });
    return date.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
  }

  function clockTime(value) {
    const date = parseTime(value);
    return date ? date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }) : "";
  }

  /** A link target only for web addresses: never javascript:, data: and the like. */
  function safeUrl(value) {
    try {
      const url = new URL(String(value));
      return url.protocol === "http:" || url.protocol === "https:" ? url : null;
    } catch {
      return null;
    }
  }

  function titleFrom(text) {
    const line = text.trim().split("\n")[0].trim();
    return line.length > 60 ? `${line.slice(0, 57).trimEnd()}…` : line || DEFAULT_NAME;
  }

  function stored(key) {
    try {
      return localStorage.getItem(key);
    } catch {
      return null; // storage can be switched off; the page works without it
    }
  }

  function store(key, value) {
    try {
      if (value === null || value === "") localStorage.removeItem(key);
      else localStorage.setItem(key, value);
    } catch {
      /* not remembered, that is all */
    }
  }

  function pendingReplies() {
    try {
      return JSON.parse(stored(KEYS.pending) || "{}") || {};
    } catch {
      return {};
    }
  }

  function rememberPending(chatId, mode) {
    store(KEYS.pending, JSON.stringify({ ...pendingReplies(), [chatId]: mode }));
  }

  function forgetPending(chatId) {
    const pending = pendingReplies();
    if (!(chatId in pending)) return;
    delete pending[chatId];
    store(KEYS.pending, Object.keys(pending).length ? JSON.stringify(pending) : null);
  }

  // ---------------------------------------------------------------- alerts

  function showError(message) {
    const alert = node("div", "alert");
    alert.append(node("span", "alert-text", message));
    alert.append(iconButton("close", "Dismiss", () => alert.remove()));
    el.alerts.append(alert);
    while (el.alerts.children.length > 3) el.alerts.firstElementChild.remove();
    setTimeout(() => alert.remove(), ALERT_SECONDS * 1000);
  }

  // ---------------------------------------------------------------- health

  async function checkHealth() {
    let body = null;
    let ok = false;
    try {
      const response = await fetch("/health", { headers: { Accept: "application/json" } });
      body = await readJson(response);
      ok = response.ok;
    } catch {
      setModelStatus("offline", "Server unreachable", "");
      setTimeout(checkHealth, 5000);
      return;
    }
    const model = (body && body.model) || {};
    if (ok) {
      setModelStatus("ok", model.name || "Model ready", model.path || "");
    } else if (model.status === "loading") {
      setModelStatus("loading", "Model loading…", "");
      setTimeout(checkHealth, 2000);
    } else {
      const reason = (body && body.reason) || "unavailable";
      setModelStatus("failed", "Model unavailable", reason);
    }
  }

  function setModelStatus(status, label, detail) {
    el.modelStatus.dataset.status = status;
    el.modelLabel.textContent = label;
    el.modelStatus.title = detail;
  }

  // ---------------------------------------------------------------- the chat list

  async function refreshChats() {
    const seq = ++state.listSeq;
    const params = new URLSearchParams({ limit: "200" });
    if (state.query) params.set("q", state.query);
    try {
      const chats = await api("GET", `/chats/?${params}`);
      if (seq !== state.listSeq) return;
      state.chats = chats;
      const selected = state.chat && chats.find((chat) => chat.id === state.chat.id);
      if (selected) state.chat = selected;
    } catch (error) {
      showError(`Could not load the chats: ${error.message}.`);
    }
    renderChats();
    renderTitle();
  }

  function renderChats() {
    if (state.renaming) return; // redrawn when the name is saved
    el.chatList.replaceChildren(...state.chats.map(chatItem));
    el.chatListEmpty.hidden = state.chats.length > 0;
    el.chatListEmpty.textContent = state.query ? "No chat matches." : "No chats yet.";
  }

  function chatItem(chat) {
    const item = node("li", "chat-item");
    item.dataset.id = chat.id;
    item.classList.toggle("active", Boolean(state.chat && state.chat.id === chat.id));
    const reply = replies.get(chat.id);
    item.classList.toggle("generating", Boolean(reply && reply.active));

    const open = node("button", "chat-open");
    open.type = "button";
    open.title = chat.name;
    open.append(node("span", "chat-name", chat.name), node("span", "chat-time", relativeTime(chat.updated_at)));
    open.addEventListener("click", () => selectChat(chat.id));
    if (item.classList.contains("active")) open.setAttribute("aria-current", "page");

    const actions = node("div", "chat-actions");
    actions.append(
      iconButton("edit", `Rename ${chat.name}`, () => editName(open, chat), "chat-rename"),
      iconButton("trash", `Delete ${chat.name}`, () => confirmDelete(chat), "chat-delete danger"),
    );
    item.append(open, actions);
    return item;
  }

  async function createChat(name = DEFAULT_NAME) {
    const chat = await api("POST", "/chats/create", { name });
    state.chats = [chat, ...state.chats.filter((other) => other.id !== chat.id)];
    return chat;
  }

  async function startNewChat() {
    try {
      const chat = await createChat();
      await selectChat(chat.id, chat);
      el.input.focus();
    } catch (error) {
      showError(`Could not create a chat: ${error.message}.`);
    }
    refreshChats();
  }

  /** Replace `target` by an input holding the chat's name; Enter or leaving saves, Escape cancels. */
  function editName(target, chat) {
    if (state.renaming) return;
    state.renaming = true;
    const input = node("input", "rename-input");
    input.value = chat.name;
    input.maxLength = 200;
    input.setAttribute("aria-label", "Chat name");
    target.hidden = true;
    target.after(input);
    input.focus();
    input.select();
    let finished = false;
    const finish = async (save) => {
      if (finished) return;
      finished = true;
      const name = input.value.trim();
      input.remove();
      target.hidden = false;
      state.renaming = false;
      if (save && name && name !== chat.name) await renameChat(chat.id, name);
      else renderChats();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
  }

  async function renameChat(chatId, name) {
    try {
      const chat = await api("PUT", `/chats/update/${encodeURIComponent(chatId)}`, { name });
      if (state.chat && state.chat.id === chat.id) state.chat = chat;
    } catch (error) {
      showError(`Could not rename the chat: ${error.message}.`);
    }
    await refreshChats();
  }

  function confirmDelete(chat) {
    el.confirmName.textContent = chat.name;
    el.confirmDialog.returnValue = "";
    el.confirmDialog.addEventListener(
      "close",
      () => {
        if (el.confirmDialog.returnValue === "delete") deleteChat(chat.id);
      },
      { once: true },
    );
    el.confirmDialog.showModal();
  }

  async function deleteChat(chatId) {
    const reply = replies.get(chatId);
    if (reply) {
      reply.close();
      replies.delete(chatId);
      forgetPending(chatId);
      await api("POST", `/conversations/stop/${encodeURIComponent(chatId)}`).catch(() => null);
    }
    try {
      await api("DELETE", `/chats/delete/${encodeURIComponent(chatId)}`);
    } catch (error) {
      if (error.status !== 404) {
        showError(`Could not delete the chat: ${error.message}.`);
        return;
      }
    }
    state.chats = state.chats.filter((chat) => chat.id !== chatId);
    if (state.chat && state.chat.id === chatId) await selectChat(null);
    await refreshChats();
  }

  // ---------------------------------------------------------------- the selected chat

  function chatFromHash() {
    const match = /^#chat=([0-9A-Za-z-]+)$/.exec(location.hash);
    return match ? match[1] : null;
  }

  function setHash(chatId) {
    const hash = chatId ? `#chat=${chatId}` : "";
    if (location.hash !== hash) history.replaceState(null, "", `${location.pathname}${location.search}${hash}`);
  }

  /** Show a chat (or none): its name, its messages, and its reply if one is streaming or pending. */
  async function selectChat(chatId, known = null) {
    const seq = ++state.selectSeq;
    state.chat = chatId ? known || state.chats.find((chat) => chat.id === chatId) || { id: chatId, name: "" } : null;
    state.messages = [];
    setHash(chatId);
    closeSidebar();
    renderChats();
    renderTitle();
    el.messageList.replaceChildren();
    el.emptyState.hidden = Boolean(chatId);
    updateComposer();
    if (!chatId) return;
    let chat;
    let messages;
    try {
      [chat, messages] = await Promise.all([
        api("GET", `/chats/${encodeURIComponent(chatId)}`),
        api("GET", `/chats/${encodeURIComponent(chatId)}/conversations`),
      ]);
    } catch (error) {
      if (seq !== state.selectSeq) return;
      if (error.status === 404) {
        showError("That chat does not exist any more.");
        forgetPending(chatId);
        await selectChat(null);
        refreshChats();
      } else {
        showError(`Could not load the chat: ${error.message}.`);
      }
      return;
    }
    if (seq !== state.selectSeq) return;
    state.chat = chat;
    state.messages = messages;
    renderTitle();
    renderMessages();
  }

  function renderTitle() {
    const chat = state.chat;
    el.title.textContent = chat ? chat.name : "New conversation";
    el.chatActions.hidden = !chat;
    document.title = chat && chat.name ? `${chat.name} · chatapi` : "chatapi";
  }

  function renderMessages() {
    const chatId = state.chat.id;
    const reply = replies.get(chatId);
    const shown = state.messages.filter((message) => !(reply && message.id === reply.messageId));
    el.messageList.replaceChildren(...shown.map(savedMessageView));
    const last = state.messages[state.messages.length - 1];
    if (reply) {
      reply.view = null;
      renderReply(reply);
    } else if (last && last.role === "Human") {
      // The page was reloaded (or left) while this chat's reply streamed: join it again. The server
      // replays it from the start if it still runs, or starts it if it never did.
      // `after` makes the server answer 204 instead of a second reply if this one ended meanwhile.
      const mode = pendingReplies()[chatId];
      if (mode) startReply(chatId, mode, last.id);
      else el.messageList.append(noReplyView(chatId));
    } else {
      forgetPending(chatId);
    }
    el.emptyState.hidden = el.messageList.children.length > 0;
    updateComposer();
    scrollToBottom(true);
  }

  function messageView(role) {
    const item = node("li", `message ${role === "Human" ? "human" : "assistant"}`);
    if (role !== "Human") {
      const avatar = node("div", "avatar");
      const image = node("img");
      image.src = "/static/favicon.svg";
      image.alt = "";
      avatar.append(image);
      item.append(avatar);
    }
    const body = node("div", "message-body");
    body.append(node("div", "bubble"));
    item.append(body);
    return item;
  }

  function savedMessageView(message) {
    const item = messageView(message.role);
    item.dataset.id = message.id;
    if (message.role !== "Human") item.dataset.state = "saved";
    const body = item.querySelector(".message-body");
    showText(body.querySelector(".bubble"), message.message, message.citations, message.sources);
    if (Array.isArray(message.sources) && message.sources.length) body.append(sourcesView(message.sources));
    body.append(node("div", "meta", clockTime(message.created_at)));
    return item;
  }

  function noReplyView(chatId) {
    const item = messageView("Assistant");
    item.classList.add("no-reply");
    const body = item.querySelector(".message-body");
    body.append(node("div", "note info", "No reply yet."), retryButton(chatId, "Get a reply"));
    return item;
  }

  function retryButton(chatId, label = "Try again") {
    const actions = node("div", "message-actions");
    const button = node("button", "button retry", label);
    button.type = "button";
    button.addEventListener("click", () => startReply(chatId));
    actions.append(button);
    return actions;
  }

  /** A message's text, with a superscript [n] link to the source after each sentence the server cited
   * (`citations`: character offsets into the text). Text nodes only: the text is never read as HTML. */
  function showText(bubble, text, citations, sources) {
    const byNumber = new Map((Array.isArray(sources) ? sources : []).map((source) => [source.n, source]));
    // Each citation's link goes after its sentence; where the model wrote the "[n]" itself, in its place.
    const marks = (Array.isArray(citations) ? citations : [])
      .filter((c) => Number.isInteger(c.end) && c.end > 0 && c.end <= text.length && byNumber.has(c.n))
      .map((c) => {
        const marker = `[${c.n}]`;
        const written = text.lastIndexOf(marker, c.end - marker.length);
        return written >= 0 && written >= c.start
          ? { at: written, length: marker.length, n: c.n }
          : { at: c.end, length: 0, n: c.n };
      })
      .sort((a, b) => a.at - b.at);
    const parts = [];
    let shown = 0;
    for (const mark of marks) {
      if (mark.at < shown) continue; // the same written marker cited twice
      if (mark.at > shown) parts.push(document.createTextNode(text.slice(shown, mark.at)));
      shown = mark.at + mark.length;
      parts.push(citationLink(byNumber.get(mark.n)));
    }
    if (shown < text.length) parts.push(document.createTextNode(text.slice(shown)));
    bubble.replaceChildren(...parts);
  }

  function citationLink(source) {
    const mark = node("sup", "citation");
    const url = safeUrl(source.url);
    const link = node(url ? "a" : "span", "citation-link", `[${source.n}]`);
    const name = `Source ${source.n}: ${source.title || source.url || "untitled page"}`;
    link.title = name;
    if (url) {
      link.setAttribute("aria-label", name); // "Source 1: <title>", not "[1]"
      link.href = url.href;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
    }
    mark.append(link);
    return mark;
  }

  function sourcesView(sources) {
    const box = node("div", "sources");
    box.append(node("p", "sources-title", "Sources"));
    const list = node("ol");
    sources.forEach((source, index) => {
      const item = node("li", "source");
      item.append(node("span", "source-n", source.n ?? index + 1));
      const url = safeUrl(source.url);
      const label = source.title || source.url || "untitled page";
      let link;
      if (url) {
        link = node("a", "source-link", label);
        link.href = url.href;
        link.target = "_blank";
        link.rel = "noopener noreferrer";
      } else {
        link = node("span", "source-link", label);
      }
      if (source.snippet) link.title = String(source.snippet);
      item.append(link);
      if (url) item.append(node("span", "source-host", url.hostname));
      list.append(item);
    });
    box.append(list);
    return box;
  }

  function nearBottom() {
    const box = el.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  }

  function scrollToBottom(force = false) {
    if (force || nearBottom()) el.messages.scrollTop = el.messages.scrollHeight;
  }

  // ---------------------------------------------------------------- sending and replies

  function mode() {
    return el.internet.checked ? "internet" : "local";
  }

  /** The query options of the inference routes: the settings, plus top_p and seed from the page's URL. */
  function replyOptions() {
    const options = { max_tokens: el.maxTokens.value.trim(), temperature: el.temperature.value.trim() };
    for (const name of ["top_p", "seed"]) {
      if (pageParams.has(name)) options[name] = pageParams.get(name);
    }
    return options;
  }

  function replyUrl(chatId, replyMode, after) {
    const route = replyMode === "internet" ? "inference_internet" : "inference";
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(replyOptions())) {
      if (value !== "") params.set(name, value);
    }
    if (after) params.set("after", after);
    const query = params.toString();
    return `/conversations/${route}/${encodeURIComponent(chatId)}${query ? `?${query}` : ""}`;
  }

  async function send(raw) {
    const text = raw.trim();
    if (!text || state.sending) return;
    let chat = state.chat;
    const running = chat && replies.get(chat.id);
    if (running && running.active) return;
    state.sending = true;
    updateComposer();
    try {
      if (!chat) {
        chat = await createChat(titleFrom(text));
        await selectChat(chat.id, chat);
      } else if (state.messages.length === 0 && chat.name === DEFAULT_NAME) {
        await renameChat(chat.id, titleFrom(text)); // a new chat is named after its first message
      }
      const message = await api("POST", "/conversations/create", { chat_id: chat.id, role: "Human", message: text });
      el.input.value = "";
      autosize();
      if (state.chat && state.chat.id === chat.id) {
        state.messages.push(message);
        for (const stale of el.messageList.querySelectorAll(".no-reply")) stale.remove();
        el.messageList.append(savedMessageView(message));
        el.emptyState.hidden = true;
        scrollToBottom(true);
      }
      startReply(chat.id);
    } catch (error) {
      showError(`Could not send the message: ${error.message}.`);
    } finally {
      state.sending = false;
      updateComposer();
    }
    refreshChats();
  }

  function startReply(chatId, replyMode = mode(), after = null) {
    const running = replies.get(chatId);
    if (running && running.active) return running;
    const reply = new Reply(chatId, replyMode, after);
    replies.set(chatId, reply);
    rememberPending(chatId, replyMode);
    if (state.chat && state.chat.id === chatId) {
      for (const stale of el.messageList.querySelectorAll(".no-reply, .message[data-state='error']")) stale.remove();
      el.emptyState.hidden = true;
    }
    reply.open();
    renderReply(reply);
    renderChats();
    updateComposer();
    return reply;
  }

  async function stopReply() {
    const reply = state.chat && replies.get(state.chat.id);
    if (!reply) return;
    el.stop.disabled = true;
    try {
      await api("POST", `/conversations/stop/${encodeURIComponent(reply.chatId)}`);
    } catch (error) {
      showError(`Could not stop the reply: ${error.message}.`);
    } finally {
      el.stop.disabled = false;
    }
  }

  /** One Assistant reply arriving over an EventSource: its events, and how it ended. */
  class Reply {
    constructor(chatId, replyMode, after) {
      this.chatId = chatId;
      this.mode = replyMode;
      this.url = replyUrl(chatId, replyMode, after);
      this.status = "connecting"; // waiting, queued, searching, reading, streaming, done, error
      this.reconnecting = false;
      this.messageId = null;
      this.text = "";
      this.query = null;
      this.sources = null;
      this.warning = null;
      this.position = null;
      this.done = null; // the data of `done`
      this.error = null;
      this.lastEventId = null;
      this.failures = 0;
      this.reopened = false;
      this.source = null;
      this.view = null;
    }

    get active() {
      return this.status !== "done" && this.status !== "error";
    }

    open() {
      const source = new EventSource(this.url);
      this.source = source;
      for (const kind of ["start", "queued", "search", "sources", "warning", "message", "done"]) {
        source.addEventListener(kind, (event) => this.receive(kind, event));
      }
      source.addEventListener("error", (event) => this.onError(event));
    }

    close() {
      if (this.source) this.source.close();
      this.source = null;
    }

    receive(kind, event) {
      if (!this.source) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      this.lastEventId = event.lastEventId || this.lastEventId;
      this.failures = 0;
      this.reconnecting = false;
      switch (kind) {
        case "start":
          this.messageId = data.message_id;
          this.mode = data.mode || this.mode;
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
        case "message":
          this.text += String(data.content ?? "");
          this.status = "streaming";
          break;
        case "done":
          this.finish(data);
          return;
      }
      renderReply(this);
    }

    onError(event) {
      const source = this.source;
      if (!source) return;
      if (typeof event.data === "string") {
        // The server's own `event: error`: the reply failed; the stream is over.
        let data = {};
        try {
          data = JSON.parse(event.data);
        } catch {
          /* a message-less error */
        }
        this.fail(data.message || "the reply failed");
        return;
      }
      if (source.readyState === EventSource.CONNECTING) {
        // The connection dropped: the browser reconnects with Last-Event-ID and the server resumes.
        this.failures += 1;
        if (this.failures > MAX_RECONNECTS) {
          this.fail("lost the connection to the server");
          return;
        }
        this.reconnecting = true;
        renderReply(this);
        return;
      }
      // Closed for good: an answer that was not a stream (an error), or 204 after the end.
      this.close();
      if (this.lastEventId) this.recover();
      else this.diagnose();
    }

    /** The stream ended without `done`: the reply may still have been saved (the latest message, when
     * the server said 204 because the message it answers was answered already). */
    async recover() {
      try {
        const messages = await api("GET", `/chats/${encodeURIComponent(this.chatId)}/conversations`);
        const latest = messages[messages.length - 1];
        const saved = this.messageId
          ? messages.find((message) => message.id === this.messageId)
          : latest && latest.role === "Assistant" && latest;
        if (saved) {
          this.finish({ message: saved, finish_reason: null });
          return;
        }
      } catch {
        /* reported below */
      }
      this.fail("the reply was interrupted");
    }

    /** EventSource hides why a stream would not open: ask the route again for its JSON error. */
    async diagnose() {
      const controller = new AbortController();
      let response;
      try {
        response = await fetch(this.url, { headers: { Accept: "application/json" }, signal: controller.signal });
      } catch {
        this.fail("the server cannot be reached");
        return;
      }
      if (response.status === 401) {
        // It wants a key (and started nothing): sign in and open the stream again.
        try {
          await signIn();
        } catch (error) {
          this.fail(error.message);
          return;
        }
        this.open();
        return;
      }
      if (response.status === 204) {
        this.recover(); // answered already: show the saved reply
        return;
      }
      if (response.ok) {
        controller.abort(); // it opens now (a passing failure): listen again, once
        if (this.reopened) {
          this.fail("the reply stream could not be opened");
        } else {
          this.reopened = true;
          this.open();
        }
        return;
      }
      this.fail(errorMessage(await readJson(response), response.status));
    }

    finish(data) {
      this.close();
      this.status = "done";
      this.done = data;
      if (data.message) this.text = data.message.message; // the saved text: the pieces, trimmed
      if (data.message && Array.isArray(data.message.sources)) this.sources = data.message.sources;
      this.settle();
      if (data.message && state.chat && state.chat.id === this.chatId) {
        if (!state.messages.some((message) => message.id === data.message.id)) state.messages.push(data.message);
      }
      refreshChats();
    }

    fail(message) {
      this.close();
      this.status = "error";
      this.error = message;
      this.settle();
    }

    settle() {
      forgetPending(this.chatId);
      if (replies.get(this.chatId) === this) replies.delete(this.chatId);
      renderReply(this);
      renderChats();
      updateComposer();
    }
  }

  /** Draw a reply into the message list, if its chat is the one shown. */
  function renderReply(reply) {
    if (!state.chat || state.chat.id !== reply.chatId) return;
    const follow = nearBottom();
    let item = reply.view;
    if (!item || !item.isConnected) {
      item = reply.view = messageView("Assistant");
      el.messageList.append(item);
      el.emptyState.hidden = true;
    }
    const finish = reply.done ? reply.done.finish_reason : null;
    let phase = "streaming";
    if (reply.status === "error") phase = "error";
    else if (reply.status === "done") phase = finish === "cancelled" ? "stopped" : "done";
    item.dataset.state = phase;
    if (reply.messageId) item.dataset.id = reply.messageId;

    const body = item.querySelector(".message-body");
    const bubble = body.querySelector(".bubble");
    const parts = [];
    const status = replyStatus(reply);
    if (status) parts.push(status);
    if (reply.warning) parts.push(node("div", "note warning", reply.warning));
    const saved = reply.done ? reply.done.message : null; // citations come with `done`
    showText(bubble, reply.text, saved ? saved.citations : null, reply.sources);
    parts.push(bubble);
    if (reply.sources && reply.sources.length) parts.push(sourcesView(reply.sources));
    if (reply.status === "error") {
      parts.push(node("div", "note error", `Error: ${reply.error}.`), retryButton(reply.chatId));
    } else if (reply.status === "done") {
      if (!saved) {
        const why = finish === "cancelled" ? "Stopped before any text was written." : "No reply was written.";
        parts.push(node("div", "note info", why), retryButton(reply.chatId));
      } else if (finish === "cancelled") {
        parts.push(node("div", "note info", "Stopped."));
      } else if (finish === "length") {
        parts.push(node("div", "note info", "Reached the max tokens limit."));
      }
      if (saved) parts.push(node("div", "meta", replyMeta(reply)));
    }
    body.replaceChildren(...parts);
    if (follow) scrollToBottom(true);
  }

  function replyStatus(reply) {
    if (reply.status === "done" || reply.status === "error") return null;
    let text = null;
    if (reply.reconnecting) text = "Reconnecting…";
    else if (reply.status === "queued") text = `Waiting for the model (position ${reply.position})…`;
    else if (reply.status === "searching") text = `Searching the web for “${reply.query}”…`;
    else if (reply.status === "reading") text = `Reading ${reply.sources.length} pages…`;
    else if (reply.text) return null;
    const status = node("div", "status");
    status.setAttribute("role", "status"); // read out: "Reconnecting…", "Searching the web…"
    const dots = node("span", "typing");
    dots.setAttribute("aria-label", "Writing");
    dots.append(node("span"), node("span"), node("span"));
    status.append(dots);
    if (text) status.append(node("span", "status-text", text));
    return status;
  }

  function replyMeta(reply) {
    const parts = [clockTime(reply.done.message.created_at)];
    const usage = reply.done.usage;
    const timings = reply.done.timings;
    if (usage && usage.completion_tokens) parts.push(`${usage.completion_tokens} tokens`);
    if (timings && timings.tokens_per_second) parts.push(`${Math.round(timings.tokens_per_second)} tokens/s`);
    return parts.filter(Boolean).join(" · ");
  }

  // ---------------------------------------------------------------- the composer and the layout

  function updateComposer() {
    const reply = state.chat && replies.get(state.chat.id);
    const generating = Boolean(reply && reply.active);
    el.send.hidden = generating;
    el.stop.hidden = !generating;
    el.send.disabled = state.sending || !el.input.value.trim();
  }

  function autosize() {
    el.input.style.height = "auto";
    el.input.style.height = `${Math.min(el.input.scrollHeight, 200)}px`;
  }

  function openSidebar() {
    el.app.classList.add("sidebar-open");
    el.scrim.hidden = false;
    el.openSidebar.setAttribute("aria-expanded", "true");
  }

  function closeSidebar() {
    el.app.classList.remove("sidebar-open");
    el.scrim.hidden = true;
    el.openSidebar.setAttribute("aria-expanded", "false");
  }

  function loadSettings() {
    el.maxTokens.value = pageParams.get("max_tokens") ?? stored(KEYS.maxTokens) ?? "";
    el.temperature.value = pageParams.get("temperature") ?? stored(KEYS.temperature) ?? "";
    el.internet.checked = (pageParams.get("internet") ?? stored(KEYS.internet)) === "1";
  }

  function bind() {
    el.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      send(el.input.value);
    });
    el.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        if (!el.send.hidden && !el.send.disabled) send(el.input.value);
      }
    });
    el.input.addEventListener("input", () => {
      autosize();
      updateComposer();
    });
    el.stop.addEventListener("click", stopReply);
    el.signInAgain.addEventListener("click", signInAgain);
    el.signInForm.addEventListener("submit", (event) => {
      event.preventDefault();
      submitKey();
    });
    el.newChat.addEventListener("click", startNewChat);
    el.renameChat.addEventListener("click", () => state.chat && editName(el.title, state.chat));
    el.deleteChat.addEventListener("click", () => state.chat && confirmDelete(state.chat));
    el.internet.addEventListener("change", () => store(KEYS.internet, el.internet.checked ? "1" : "0"));
    el.maxTokens.addEventListener("change", () => store(KEYS.maxTokens, el.maxTokens.value.trim()));
    el.temperature.addEventListener("change", () => store(KEYS.temperature, el.temperature.value.trim()));
    for (const suggestion of el.suggestions.querySelectorAll(".suggestion")) {
      suggestion.addEventListener("click", () => send(suggestion.textContent));
    }
    let searchTimer = null;
    el.search.addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        state.query = el.search.value.trim();
        refreshChats();
      }, 200);
    });
    el.openSidebar.addEventListener("click", openSidebar);
    el.closeSidebar.addEventListener("click", closeSidebar);
    el.scrim.addEventListener("click", closeSidebar);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") closeSidebar();
    });
    window.addEventListener("hashchange", () => {
      const chatId = chatFromHash();
      if (chatId !== (state.chat ? state.chat.id : null)) selectChat(chatId);
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") refreshChats();
    });
    setInterval(renderChats, 60 * 1000); // keeps "5 min ago" true
  }

  loadSettings();
  bind();
  autosize();
  checkHealth();
  refreshChats();
  selectChat(chatFromHash());
})();
