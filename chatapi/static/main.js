/* chatapi's chat page: the wiring. Chats and messages go over the JSON API (api.js), replies arrive over
 * their event stream (stream.js), what the page knows is in state.js and views.js draws it.
 *
 * Plain ES modules, no build step.
 */
import { askToSignIn, connectAccounts, loadPerson } from "./accounts.js";
import { allowSignIn, api, download, readJson, signIn, useSignInPrompt } from "./api.js";
import { hashFor, parseHash } from "./hits.js";
import { connectModels, loadModels, showModelsPanelTo } from "./models.js";
import { connectSearch, searchMessages } from "./search.js";
import { connectShares } from "./shares.js";
import { ChatState, DEFAULT_NAME, KEYS, PendingReplies, Reply, Store, titleFrom } from "./state.js";
import { ReplyStream, replyUrl } from "./stream.js";
import * as views from "./views.js";

const { el } = views;

function browserStorage() {
  try {
    return window.localStorage; // throws when storage is switched off
  } catch {
    return null;
  }
}

const pageParams = new URLSearchParams(location.search);
const store = new Store(browserStorage());
const pending = new PendingReplies(store);
const state = new ChatState();
const streams = new WeakMap(); // Reply -> the ReplyStream it comes from

// ---------------------------------------------------------------- signing in

/** The sign-in form (accounts.js), whenever the server answers 401; closed, it leaves a Sign in button. */
async function askForSignIn() {
  try {
    await askToSignIn();
  } catch (error) {
    el.signInAgain.hidden = false;
    throw error;
  }
}

/** Someone else signed in (the session had ended): what the page showed was the other person's. */
function personChanged() {
  selectChat(null);
  refreshChats();
  searchMessages(state.query);
}

/** The Sign in button, after the prompt was closed: ask again, then load what the page shows. */
async function signInAgain() {
  allowSignIn();
  el.signInAgain.hidden = true;
  try {
    await signIn();
  } catch {
    return;
  }
  refreshChats();
  searchMessages(state.query);
  loadModels();
  if (state.chat) selectChat(state.chat.id);
}

/** Signed in: /health names the model, and the models the chats may pick can be asked for. */
function signedIn() {
  checkHealth();
  loadModels();
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
    views.setModelStatus("offline", "Server unreachable", "");
    setTimeout(checkHealth, 5000);
    return;
  }
  const model = (body && body.model) || {};
  if (ok) {
    views.setModelStatus("ok", model.name || "Model ready", model.path || "");
  } else if (model.status === "loading") {
    views.setModelStatus("loading", "Model loading…", "");
    setTimeout(checkHealth, 2000);
  } else {
    views.setModelStatus("failed", "Model unavailable", (body && body.reason) || "unavailable");
  }
}

// ---------------------------------------------------------------- chats

async function refreshChats() {
  const seq = ++state.listSeq;
  const params = new URLSearchParams({ limit: "200" });
  if (state.query) params.set("q", state.query);
  try {
    // A name is 200 characters at most (and ?q= too): a longer search (for messages) names no chat.
    const chats = Array.from(state.query).length > 200 ? [] : await api("GET", `/chats/?${params}`);
    if (seq !== state.listSeq) return;
    state.setChats(chats);
  } catch (error) {
    views.showError(`Could not load the chats: ${error.message}.`);
  }
  views.renderChats();
  views.renderOpenChat();
}

async function createChat(name = DEFAULT_NAME) {
  const chat = await api("POST", "/chats/create", { name });
  state.putChat(chat);
  return chat;
}

async function startNewChat() {
  try {
    const chat = await createChat();
    await selectChat(chat.id, chat);
    el.input.focus();
  } catch (error) {
    views.showError(`Could not create a chat: ${error.message}.`);
  }
  refreshChats();
}

async function renameChat(chatId, name) {
  try {
    state.putChat(await api("PUT", `/chats/update/${encodeURIComponent(chatId)}`, { name }));
  } catch (error) {
    views.showError(`Could not rename the chat: ${error.message}.`);
  }
  await refreshChats();
}

/** Show a modal dialog whose form has method="dialog"; resolves to the value of the button that closed it. */
function ask(dialog) {
  return new Promise((resolve) => {
    dialog.returnValue = "";
    dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true });
    dialog.showModal();
  });
}

async function confirmDelete(chat) {
  el.confirmName.textContent = chat.name;
  if ((await ask(el.confirmDialog)) === "delete") deleteChat(chat.id);
}

async function deleteChat(chatId) {
  const reply = state.replies.get(chatId);
  if (reply) {
    streams.get(reply).close();
    state.replies.delete(chatId);
    pending.forget(chatId);
    await api("POST", `/conversations/stop/${encodeURIComponent(chatId)}`).catch(() => null);
  }
  try {
    await api("DELETE", `/chats/delete/${encodeURIComponent(chatId)}`);
  } catch (error) {
    if (error.status !== 404) {
      views.showError(`Could not delete the chat: ${error.message}.`);
      return;
    }
  }
  state.removeChat(chatId);
  if (state.isOpen(chatId)) await selectChat(null);
  await refreshChats();
  if (state.query) searchMessages(state.query); // its messages are no hits any more
}

// ---------------------------------------------------------------- the open chat's settings, export, import

function openChatSettings() {
  if (!state.chat) return;
  el.systemPromptInput.value = state.chat.system_prompt || "";
  showSettingsError("");
  el.chatSettings.showModal();
  el.systemPromptInput.focus();
}

/** Save the open chat's system prompt (PUT /chats/update/<id>); an empty one clears it (null). */
async function saveChatSettings() {
  const chat = state.chat;
  if (!chat) return;
  const text = el.systemPromptInput.value;
  el.chatSettingsSave.disabled = true;
  try {
    const system_prompt = text.trim() ? text : null;
    state.putChat(await api("PUT", `/chats/update/${encodeURIComponent(chat.id)}`, { system_prompt }));
    el.chatSettings.close();
    views.renderOpenChat();
    refreshChats();
  } catch (error) {
    showSettingsError(views.sentence(`Not saved: ${error.message}.`));
  } finally {
    el.chatSettingsSave.disabled = false;
  }
}

/** The open chat's model (PUT /chats/update/<id> {"model"}): an id, or null for the server's default. When the
 * server refuses it (422: a model it does not know; 409), the picker shows the chat's model again. */
async function chooseModel(value) {
  const chat = state.chat;
  if (!chat) return;
  const model = value || null;
  if ((chat.model || null) === model) return;
  try {
    state.putChat(await api("PUT", `/chats/update/${encodeURIComponent(chat.id)}`, { model }));
  } catch (error) {
    views.showError(`Could not change the chat's model: ${error.message}.`);
    if (error.status === 409 || error.status === 422) loadModels(); // removed meanwhile: the list is old
  }
  views.renderOpenChat();
  refreshChats();
}

function showSettingsError(message) {
  el.chatSettingsError.textContent = message;
  el.systemPromptInput.setAttribute("aria-invalid", message ? "true" : "false");
}

/** Download the open chat (GET /chats/<id>/export): "json", which Import takes back, or "markdown". Fetched
 * rather than linked, so that a server that wants a key can ask for it and errors show in the page. */
async function exportChat(format) {
  views.toggleExportMenu(false);
  el.exportToggle.focus(); // the button that had it is hidden now
  const chat = state.chat;
  if (!chat) return;
  try {
    const query = new URLSearchParams({ format });
    const file = await download(`/chats/${encodeURIComponent(chat.id)}/export?${query}`);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(file.blob);
    link.download = file.filename || `chat.${format === "markdown" ? "md" : "json"}`;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60 * 1000);
  } catch (error) {
    views.showError(`Could not export the chat: ${error.message}.`);
  }
}

/** Make a new chat from a JSON export the person chose (POST /chats/import), and open it. */
async function importChat(file) {
  try {
    const chat = await api("POST", "/chats/import", file);
    state.putChat(chat);
    await selectChat(chat.id, chat);
  } catch (error) {
    views.showError(`Could not import ${file.name}: ${error.message}.`);
  }
  refreshChats();
}

// ---------------------------------------------------------------- the open chat

/** The page's URL says which chat is open (#chat=<id>), and which of its messages a search found
 * (#chat=<id>&message=<id>), so that a reload shows the same. */
function setHash(chatId, messageId = null) {
  const hash = hashFor(chatId, messageId);
  if (location.hash !== hash) history.replaceState(null, "", `${location.pathname}${location.search}${hash}`);
}

/** Show a chat (or none): its name, its messages, and its reply if one is streaming or pending; with `messageId`
 * (a search's hit), scrolled to that message, marked. */
async function selectChat(chatId, known = null, messageId = null) {
  const seq = state.open(chatId, known);
  setHash(chatId, messageId);
  views.closeSidebar();
  views.renderChats();
  views.renderOpenChat();
  views.clearMessages();
  views.updateControls();
  if (!chatId) return;
  let chat;
  let messages;
  try {
    [chat, messages] = await Promise.all([
      api("GET", `/chats/${encodeURIComponent(chatId)}`),
      api("GET", `/chats/${encodeURIComponent(chatId)}/conversations`),
    ]);
  } catch (error) {
    if (!state.isLatestOpen(seq)) return;
    if (error.status === 404) {
      views.showError("That chat does not exist any more.");
      pending.forget(chatId);
      await selectChat(null);
      refreshChats();
    } else {
      views.showError(`Could not load the chat: ${error.message}.`);
    }
    return;
  }
  if (!state.isLatestOpen(seq)) return;
  state.chat = chat;
  state.messages = messages;
  views.renderOpenChat();
  showMessages();
  if (messageId) showFound(messageId);
}

/** A search's hit: its chat, at the message. The open chat is loaded again only when the message is not shown
 * (it is still loading, or the message came after). */
function openHit(chatId, messageId) {
  if (state.isOpen(chatId) && views.showFound(messageId)) {
    setHash(chatId, messageId);
    views.closeSidebar();
  } else {
    selectChat(chatId, null, messageId);
  }
}

function showFound(messageId) {
  if (!views.showFound(messageId)) views.showError("That message is not in the chat any more.");
}

/** Draw the open chat's messages; join its reply if the page went away while it streamed. */
function showMessages() {
  const chatId = state.chat.id;
  const last = state.lastMessage();
  const waiting = pending.get(chatId);
  if (state.replies.has(chatId)) {
    views.renderMessages();
    return;
  }
  // The page was reloaded (or left) while this chat's reply streamed: join it again. The server replays it
  // from the start if it still runs, or starts it if it never did. `after` makes the server answer 204
  // instead of a second reply if this one ended meanwhile.
  if (last && last.role === "Human") {
    views.renderMessages({ noReply: !waiting });
    if (waiting) startReply(chatId, { mode: waiting.mode, after: last.id });
    return;
  }
  // The same for a regenerate of the last reply (until it is saved, the old one is the last message).
  const answered = state.messages[state.messages.length - 2];
  if (last && waiting && waiting.replaces === last.id && answered) {
    views.renderMessages();
    startReply(chatId, { mode: waiting.mode, after: answered.id, replaces: last.id });
    return;
  }
  pending.forget(chatId);
  views.renderMessages();
}

// ---------------------------------------------------------------- sending and replies

/** The mode the Internet switch chooses for the next reply. */
function chosenMode() {
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

async function send(raw) {
  const text = raw.trim();
  if (!text || state.sending) return;
  let chat = state.chat;
  if (chat && state.activeReply(chat.id)) return;
  state.sending = true;
  views.updateControls();
  try {
    if (!chat) {
      chat = await createChat(titleFrom(text));
      await selectChat(chat.id, chat);
    } else if (state.messages.length === 0 && chat.name === DEFAULT_NAME) {
      await renameChat(chat.id, titleFrom(text)); // a new chat is named after its first message
    }
    const message = await api("POST", "/conversations/create", { chat_id: chat.id, role: "Human", message: text });
    el.input.value = "";
    views.autosize();
    if (state.isOpen(chat.id)) {
      state.addMessage(message);
      views.appendMessage(message);
    }
    startReply(chat.id);
  } catch (error) {
    views.showError(`Could not send the message: ${error.message}.`);
  } finally {
    state.sending = false;
    views.updateControls();
  }
  refreshChats();
}

/** Stream the chat's next reply into the page (or the one running already). `after`: the message it answers,
 * when joining a reply that may have ended; `replaces`: regenerate, the Assistant message it replaces. */
function startReply(chatId, { mode: replyMode = chosenMode(), after = null, replaces = null } = {}) {
  const running = state.activeReply(chatId);
  if (running) return running;
  const reply = new Reply(chatId, replyMode, { replaces });
  state.replies.set(chatId, reply);
  pending.remember(chatId, replyMode, replaces);
  if (state.isOpen(chatId)) {
    views.clearForReply();
    if (replaces) views.hideMessage(replaces);
  }
  const url = replyUrl(chatId, { mode: replyMode, options: replyOptions(), after, replace: replaces });
  listen(reply, new ReplyStream(url));
  views.renderReply(reply);
  views.renderChats();
  views.updateControls();
  return reply;
}

/** Write the last reply again: it streams in the old one's place, which the server deletes once the new one
 * is saved (and keeps if the new one fails or writes nothing). */
function regenerate(message) {
  if (!state.chat || state.lastMessage() !== message) return;
  startReply(state.chat.id, { replaces: message.id });
}

/** Save an edited message of the person's; if messages follow it, they are deleted (after asking), and the
 * message is answered again. Whether the edit is over (false: it stays open, to change or cancel). */
async function saveEdit(message, text) {
  const chatId = state.chat.id;
  const following = state.countAfter(message.id);
  if (following > 0) {
    el.confirmEditCount.textContent = following === 1 ? "The message after it" : `The ${following} messages after it`;
    if ((await ask(el.confirmEdit)) !== "edit") return false;
  }
  let updated;
  try {
    updated = await api("PUT", `/conversations/update/${encodeURIComponent(message.id)}`, { message: text });
  } catch (error) {
    views.showError(`Could not save the message: ${error.message}.`);
    return false;
  }
  try {
    if (following > 0) {
      const query = new URLSearchParams({ after: message.id });
      await api("DELETE", `/chats/${encodeURIComponent(chatId)}/conversations?${query}`);
    }
  } catch (error) {
    views.showError(`Could not delete the messages after it: ${error.message}.`);
    if (state.isOpen(chatId)) await selectChat(chatId); // show what is saved
    return true;
  }
  if (state.isOpen(chatId)) {
    state.replaceFrom(updated);
    views.renderMessages();
  }
  startReply(chatId);
  refreshChats();
  return true;
}

/** Feed a stream's events into its reply, and draw it. */
function listen(reply, stream) {
  streams.set(reply, stream);
  const update = (event) => {
    reply.receive(event.type, event.data);
    views.renderReply(reply);
  };
  for (const kind of ["start", "queued", "search", "sources", "warning", "token", "reconnecting"]) {
    stream.addEventListener(kind, update);
  }
  stream.addEventListener("done", (event) => finishReply(reply, event.data));
  stream.addEventListener("error", (event) => failReply(reply, event.data.message));
  stream.addEventListener("ended", () => recoverReply(reply));
  stream.addEventListener("unauthorized", async () => {
    // The stream wants a key (and started nothing): sign in and open it again.
    try {
      await signIn();
    } catch (error) {
      failReply(reply, error.message);
      return;
    }
    stream.open();
  });
  stream.open();
}

/** The stream ended without `done`: the reply may still have been saved (the latest message, when the
 * server said 204 because the message it answers was answered already). */
async function recoverReply(reply) {
  try {
    const messages = await api("GET", `/chats/${encodeURIComponent(reply.chatId)}/conversations`);
    const latest = messages[messages.length - 1];
    const saved = reply.messageId
      ? messages.find((message) => message.id === reply.messageId)
      : latest && latest.role === "Assistant" && latest;
    if (saved) {
      finishReply(reply, { message: saved, finish_reason: null });
      return;
    }
  } catch {
    /* reported below */
  }
  failReply(reply, "the reply was interrupted");
}

function finishReply(reply, data) {
  reply.finish(data);
  if (reply.replaces && !reply.replaced) {
    // A regenerate that wrote nothing: the old reply stays (stopped by the person, or an empty reply).
    settleReply(reply);
    if (data.finish_reason !== "cancelled") views.showError("Could not regenerate the reply: no reply was written.");
  } else {
    if (reply.saved && state.isOpen(reply.chatId)) {
      if (reply.replaces) {
        state.removeMessage(reply.replaces);
        views.removeMessage(reply.replaces);
      }
      state.addMessage(reply.saved);
    }
    settleReply(reply);
  }
  refreshChats();
}

function failReply(reply, message) {
  reply.fail(message);
  settleReply(reply);
  if (reply.replaces) views.showError(`Could not regenerate the reply: ${message}.`);
}

/** The reply is over: drawn as it ended, or, for a regenerate that saved nothing, the old message back. */
function settleReply(reply) {
  streams.get(reply).close();
  pending.forget(reply.chatId);
  if (state.replies.get(reply.chatId) === reply) state.replies.delete(reply.chatId);
  if (reply.replaces && !reply.replaced) views.restoreReplaced(reply);
  else views.renderReply(reply);
  views.renderChats();
  views.updateControls();
}

let stopping = false; // a stop request is on its way

async function stopReply() {
  const reply = state.activeReply();
  if (!reply || stopping) return;
  stopping = true; // not by disabling the button: that would take the focus from it (see views.updateComposer)
  try {
    await api("POST", `/conversations/stop/${encodeURIComponent(reply.chatId)}`);
  } catch (error) {
    views.showError(`Could not stop the reply: ${error.message}.`);
  } finally {
    stopping = false;
  }
}

// ---------------------------------------------------------------- the controls

function loadSettings() {
  el.maxTokens.value = pageParams.get("max_tokens") ?? store.get(KEYS.maxTokens) ?? "";
  el.temperature.value = pageParams.get("temperature") ?? store.get(KEYS.temperature) ?? "";
  el.internet.checked = (pageParams.get("internet") ?? store.get(KEYS.internet)) === "1";
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
    views.autosize();
    views.updateComposer();
  });
  el.stop.addEventListener("click", stopReply);
  el.signInAgain.addEventListener("click", signInAgain);
  el.newChat.addEventListener("click", startNewChat);
  el.renameChat.addEventListener("click", () => state.chat && views.editName(el.title, state.chat));
  el.deleteChat.addEventListener("click", () => state.chat && confirmDelete(state.chat));
  el.openChatSettings.addEventListener("click", openChatSettings);
  el.chatSettingsCancel.addEventListener("click", () => el.chatSettings.close());
  el.chatSettingsForm.addEventListener("submit", (event) => {
    event.preventDefault();
    saveChatSettings();
  });
  el.chatModel.addEventListener("change", () => chooseModel(el.chatModel.value));
  el.exportJson.addEventListener("click", () => exportChat("json"));
  el.exportMarkdown.addEventListener("click", () => exportChat("markdown"));
  el.exportToggle.addEventListener("click", () => views.toggleExportMenu());
  document.addEventListener("click", (event) => {
    if (!el.exportMenu.contains(event.target)) views.toggleExportMenu(false);
  });
  el.importChat.addEventListener("click", () => el.importFile.click());
  el.importFile.addEventListener("change", () => {
    const file = el.importFile.files[0];
    el.importFile.value = ""; // the same file may be chosen again
    if (file) importChat(file);
  });
  el.internet.addEventListener("change", () => store.set(KEYS.internet, el.internet.checked ? "1" : "0"));
  el.maxTokens.addEventListener("change", () => store.set(KEYS.maxTokens, el.maxTokens.value.trim()));
  el.temperature.addEventListener("change", () => store.set(KEYS.temperature, el.temperature.value.trim()));
  for (const suggestion of el.suggestions.querySelectorAll(".suggestion")) {
    suggestion.addEventListener("click", () => send(suggestion.textContent));
  }
  let searchTimer = null;
  el.search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      state.query = el.search.value.trim();
      refreshChats();
      searchMessages(state.query);
    }, 200);
  });
  el.openSidebar.addEventListener("click", views.openSidebar);
  el.closeSidebar.addEventListener("click", views.closeSidebar);
  el.scrim.addEventListener("click", views.closeSidebar);
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    views.closeSidebar();
    if (!el.exportPanel.hidden) {
      views.toggleExportMenu(false);
      el.exportToggle.focus();
    }
  });
  window.addEventListener("hashchange", () => {
    const { chatId, messageId } = parseHash(location.hash);
    if (chatId !== (state.chat ? state.chat.id : null)) selectChat(chatId, null, messageId);
    else if (chatId && messageId) openHit(chatId, messageId);
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    refreshChats();
    loadModels();
  });
  setInterval(views.renderChats, 60 * 1000); // keeps "5 min ago" true
}

useSignInPrompt(askForSignIn);
connectAccounts(store, { signedIn, personChanged, personShown: showModelsPanelTo });
connectModels({
  modelsChanged(models) {
    state.models = models;
    views.renderOpenChat();
  },
});
connectSearch({ openHit });
connectShares(() => state.chat); // the open chat's Share button
views.connectViews(state, {
  selectChat,
  renameChat,
  confirmDelete,
  startReply: (chatId) => startReply(chatId),
  regenerate,
  saveEdit,
});
loadSettings();
bind();
views.autosize();
checkHealth();
loadPerson();
loadModels();
refreshChats();
const opened = parseHash(location.hash);
selectChat(opened.chatId, null, opened.messageId);
