/* Drawing the page from the state (state.js): the chat list, the open chat's messages, replies as they stream.
 *
 * Every piece of text from the server or the person is put into the page with textContent (never as HTML),
 * except an Assistant message's, which markdown.js turns into sanitised elements; links are only made from
 * http(s) URLs. Clicks call the actions main.js hands to connectViews().
 */
import { renderMarkdown, safeUrl } from "./markdown.js";

const $ = (id) => document.getElementById(id);

export const el = {
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
  openChatSettings: $("open-chat-settings"),
  exportMenu: $("export-menu"),
  exportToggle: $("export-toggle"),
  exportPanel: $("export-panel"),
  exportJson: $("export-json"),
  exportMarkdown: $("export-markdown"),
  importChat: $("import-chat"),
  importFile: $("import-file"),
  systemPrompt: $("system-prompt"),
  systemPromptText: $("system-prompt-text"),
  alerts: $("alerts"),
  messages: $("messages"),
  emptyState: $("empty-state"),
  suggestions: $("suggestions"),
  messageList: $("message-list"),
  announcer: $("reply-announcer"),
  composer: $("composer"),
  input: $("message-input"),
  internet: $("internet"),
  maxTokens: $("max-tokens"),
  temperature: $("temperature"),
  send: $("send"),
  stop: $("stop"),
  confirmDialog: $("confirm-delete"),
  confirmName: $("confirm-name"),
  confirmEdit: $("confirm-edit"),
  confirmEditCount: $("confirm-edit-count"),
  chatSettings: $("chat-settings"),
  chatSettingsForm: $("chat-settings-form"),
  systemPromptInput: $("system-prompt-input"),
  chatSettingsError: $("chat-settings-error"),
  chatSettingsCancel: $("chat-settings-cancel"),
  chatSettingsSave: $("chat-settings-save"),
  signInAgain: $("sign-in-again"),
  modelPicker: $("model-picker"),
  chatModel: $("chat-model"),
  confirm: $("confirm-action"),
  confirmTitle: $("confirm-action-title"),
  confirmText: $("confirm-action-text"),
  confirmButton: $("confirm-action-button"),
};

const ALERT_SECONDS = 20;
const replyViews = new WeakMap(); // Reply -> its message in the list
const frames = new WeakMap(); // Reply -> the animation frame that draws its streamed text, while one is asked for
const announced = new WeakMap(); // Reply -> what of it was read out: {blocks: how many, ended: its end too}

let state = null; // the ChatState
// What clicks do: selectChat(id), renameChat(id, name), confirmDelete(chat), startReply(id), regenerate(message),
// saveEdit(message, text) -> whether the edit is over.
let actions = {};

export function connectViews(appState, appActions) {
  state = appState;
  actions = appActions;
}

// ---------------------------------------------------------------- small helpers

export function node(tag, className, text) {
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

export function relativeTime(value) {
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

/** A small button of a panel's row; `label` names it for screen readers when its text alone would not. */
export function smallButton(text, label, onClick, extraClass = "") {
  const button = node("button", `button button-small ${extraClass}`.trim(), text);
  button.type = "button";
  if (label !== text) button.setAttribute("aria-label", label);
  button.addEventListener("click", onClick);
  return button;
}

// ---------------------------------------------------------------- alerts, the model's status

/** A sentence built as `${reason}.` ends with one full stop, also when the reason (the server's) had its own. */
export function sentence(text) {
  return text.replace(/([.!?])\.$/, "$1");
}

/** A message (the server's, or ours) as a sentence: a capital first, one full stop. */
export function said(message) {
  const text = sentence(`${message}.`);
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** Show (or clear, with "") a form's error, and mark its fields. */
export function showFieldError(box, message, fields = []) {
  box.textContent = message;
  for (const field of fields) field.setAttribute("aria-invalid", message ? "true" : "false");
}

/** Ask before something that cannot be undone; resolves to whether the person said yes. */
export function confirmAction(title, text, button) {
  el.confirmTitle.textContent = title;
  el.confirmText.textContent = text;
  el.confirmButton.textContent = button;
  return new Promise((resolve) => {
    el.confirm.returnValue = "";
    el.confirm.addEventListener("close", () => resolve(el.confirm.returnValue === "confirm"), { once: true });
    el.confirm.showModal();
  });
}

export function showError(message) {
  showAlert(message, "alert");
}

/** Something done that the person should know about (their password changed), in the same place as errors. */
export function showNotice(message) {
  showAlert(message, "alert notice");
}

function showAlert(message, className) {
  const alert = node("div", className);
  alert.append(node("span", "alert-text", sentence(message)));
  alert.append(iconButton("close", "Dismiss", () => alert.remove()));
  el.alerts.append(alert);
  while (el.alerts.children.length > 3) el.alerts.firstElementChild.remove();
  setTimeout(() => alert.remove(), ALERT_SECONDS * 1000);
}

export function setModelStatus(status, label, detail) {
  el.modelStatus.dataset.status = status;
  el.modelLabel.textContent = label;
  el.modelStatus.title = detail;
}

// ---------------------------------------------------------------- the chat list and the title

export function renderChats() {
  if (state.renaming) return; // redrawn when the name is saved
  // Redrawn under the person's focus (they opened a chat, the list was refreshed): it stays on the same
  // button of the same chat, instead of falling back to the start of the page.
  const focused = document.activeElement;
  const focusedChat = el.chatList.contains(focused) ? focused.closest(".chat-item")?.dataset.id : null;
  const focusedButton = focusedChat ? [...focused.classList].find((name) => name.startsWith("chat-")) : null;
  el.chatList.replaceChildren(...state.chats.map(chatItem));
  const again = [...el.chatList.children].find((item) => item.dataset.id === focusedChat);
  if (again && focusedButton) again.querySelector(`.${focusedButton}`)?.focus();
  el.chatListEmpty.hidden = state.chats.length > 0;
  el.chatListEmpty.textContent = state.query ? "No chat matches." : "No chats yet.";
}

function chatItem(chat) {
  const item = node("li", "chat-item");
  item.dataset.id = chat.id;
  item.classList.toggle("active", state.isOpen(chat.id));
  item.classList.toggle("generating", Boolean(state.activeReply(chat.id)));

  const open = node("button", "chat-open");
  open.type = "button";
  open.title = chat.name;
  open.append(node("span", "chat-name", chat.name), node("span", "chat-time", relativeTime(chat.updated_at)));
  open.addEventListener("click", () => actions.selectChat(chat.id));
  open.addEventListener("keydown", (event) => {
    // Up and down move between the chats (Tab also stops at each chat's Rename and Delete).
    const step = { ArrowDown: "nextElementSibling", ArrowUp: "previousElementSibling" }[event.key];
    const next = step && item[step];
    if (!next) return;
    event.preventDefault();
    next.querySelector(".chat-open").focus();
  });
  if (item.classList.contains("active")) open.setAttribute("aria-current", "page");

  const buttons = node("div", "chat-actions");
  buttons.append(
    iconButton("edit", `Rename ${chat.name}`, () => editName(open, chat), "chat-rename"),
    iconButton("trash", `Delete ${chat.name}`, () => actions.confirmDelete(chat), "chat-delete danger"),
  );
  item.append(open, buttons);
  return item;
}

/** Replace `target` by an input holding the chat's name; Enter or leaving saves, Escape cancels. */
export function editName(target, chat) {
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
    if (save && name && name !== chat.name) await actions.renameChat(chat.id, name);
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

/** The open chat's name, its buttons, and its system prompt if it has one. */
export function renderOpenChat() {
  const chat = state.chat;
  el.title.textContent = chat ? chat.name : "New conversation";
  el.chatActions.hidden = !chat;
  document.title = chat && chat.name ? `${chat.name} · chatapi` : "chatapi";
  const prompt = chat && chat.system_prompt;
  el.systemPrompt.hidden = !prompt;
  el.systemPromptText.textContent = prompt || "";
  renderModelPicker(chat);
}

/** The choices of a chat's model picker: the server's default (value ""), then every model the server lists,
 * and the chat's own model when the server lists it no more (it was removed), so that the picker shows what the
 * chat names. */
export function modelChoices(models, chosen) {
  const fallback = models.find((model) => model.default);
  const choices = [{ value: "", label: fallback ? `Server default (${fallback.id})` : "Server default" }];
  for (const model of models) choices.push({ value: model.id, label: model.id });
  if (chosen && !models.some((model) => model.id === chosen)) {
    choices.push({ value: chosen, label: `${chosen} (not on the server)` });
  }
  return choices;
}

/** The open chat's model picker, hidden while no chat is open or the server lists no models. Its options are
 * drawn anew only when they change, so that a refresh does not close it under the person's hand. */
function renderModelPicker(chat) {
  el.modelPicker.hidden = !chat || !state.models || state.models.length === 0;
  if (el.modelPicker.hidden) return;
  const chosen = chat.model || "";
  const choices = modelChoices(state.models, chosen);
  const drawn = JSON.stringify(choices);
  if (el.chatModel.dataset.choices !== drawn) {
    el.chatModel.dataset.choices = drawn;
    el.chatModel.replaceChildren(
      ...choices.map(({ value, label }) => {
        const option = node("option", null, label);
        option.value = value;
        return option;
      }),
    );
  }
  el.chatModel.value = chosen;
}

// ---------------------------------------------------------------- the open chat's messages

/** Empty the message list; the empty state shows when no chat is open. */
export function clearMessages() {
  el.messageList.replaceChildren();
  el.announcer.replaceChildren();
  el.emptyState.hidden = Boolean(state.chat);
}

/** Draw the open chat's saved messages and its reply, if one is being written; with `noReply`, a note that
 * the last (Human) message has no reply, and a button to get one. */
export function renderMessages({ noReply = false } = {}) {
  const chatId = state.chat.id;
  const reply = state.replies.get(chatId);
  // A reply's own message is drawn by renderReply; a regenerate's old message waits hidden until it is saved.
  const shown = state.messages.filter((message) => !(reply && message.id === reply.messageId));
  el.messageList.replaceChildren(...shown.map(savedMessageView));
  if (reply && reply.replaces) hideMessage(reply.replaces);
  if (reply) {
    replyViews.delete(reply);
    renderReply(reply);
  }
  if (noReply) el.messageList.append(noReplyView(chatId));
  el.emptyState.hidden = el.messageList.children.length > 0;
  updateControls();
  scrollToBottom(true);
}

function messageItem(messageId) {
  return [...el.messageList.children].find((item) => item.dataset.id === messageId) || null;
}

/** Show a message of the open chat that a search found: scrolled to the middle, marked (the class "found",
 * whose colour fades) and focused, so that the keyboard goes on from there. Whether it is in the chat. */
export function showFound(messageId) {
  for (const old of el.messageList.querySelectorAll(".message.found")) old.classList.remove("found");
  const item = messageItem(messageId);
  if (!item || item.hidden) return false;
  void item.offsetWidth; // a style pass between: the fading starts again when the same message is found again
  item.classList.add("found");
  item.tabIndex = -1;
  item.scrollIntoView({ block: "center" });
  item.focus({ preventScroll: true });
  return true;
}

/** A regenerate started: its old message hides while the new one streams in its place. */
export function hideMessage(messageId) {
  const item = messageItem(messageId);
  if (item) item.hidden = true;
}

export function removeMessage(messageId) {
  const item = messageItem(messageId);
  if (item) item.remove();
}

/** A regenerate that saved nothing: its view goes, and the old message is back. */
export function restoreReplaced(reply) {
  if (!state.isOpen(reply.chatId)) return;
  const view = replyViews.get(reply);
  if (view) view.remove();
  const item = messageItem(reply.replaces);
  if (item) item.hidden = false;
}

/** Add a message just saved in the open chat (the person's). */
export function appendMessage(message) {
  for (const stale of el.messageList.querySelectorAll(".no-reply")) stale.remove();
  el.messageList.append(savedMessageView(message));
  el.emptyState.hidden = true;
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

/** The buttons under the messages: Edit on the person's, Regenerate on the last reply (saved); none while a
 * reply is being written. */
function refreshMessageTools() {
  const busy = Boolean(state.activeReply());
  const items = [...el.messageList.children].filter((item) => !item.hidden && item.classList.contains("message"));
  const last = items[items.length - 1];
  const saved = new Map(state.messages.map((message) => [message.id, message]));
  for (const item of items) {
    const old = item.querySelector(":scope > .message-body > .message-tools");
    if (old) old.remove();
    const message = saved.get(item.dataset.id);
    if (busy || !message || item.classList.contains("editing")) continue;
    const tools = node("div", "message-tools");
    if (message.role === "Human") {
      tools.append(toolButton("Edit", "Edit this message", () => editMessage(item, message)));
    } else if (item === last) {
      tools.append(toolButton("Regenerate", "Write this reply again", () => actions.regenerate(message)));
    } else {
      continue;
    }
    item.querySelector(".message-body").append(tools);
  }
}

function toolButton(label, title, onClick) {
  const button = node("button", "tool", label);
  button.type = "button";
  button.title = title;
  button.addEventListener("click", onClick);
  return button;
}

/** Edit one of the person's messages in place: Enter or Save saves (actions.saveEdit), Escape or Cancel
 * puts it back as it was. */
function editMessage(item, message) {
  const body = item.querySelector(".message-body");
  const form = node("form", "edit-form");
  const input = node("textarea", "edit-input");
  input.value = message.message;
  input.setAttribute("aria-label", "Edit message");
  const save = node("button", "button button-primary", "Save");
  save.type = "submit";
  const cancel = node("button", "button", "Cancel");
  cancel.type = "button";
  const buttons = node("div", "edit-actions");
  buttons.append(cancel, save);
  form.append(input, buttons);
  item.classList.add("editing");
  body.querySelector(".message-tools")?.remove();
  body.append(form);
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);

  const close = () => {
    form.remove();
    item.classList.remove("editing");
    refreshMessageTools();
  };
  const submit = async () => {
    const text = input.value.trim();
    if (!text || save.disabled) return;
    save.disabled = true;
    const over = await actions.saveEdit(message, text);
    save.disabled = false;
    if (over) close();
    else input.focus();
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      close();
      item.querySelector(".tool")?.focus();
    }
  });
  cancel.addEventListener("click", () => {
    close();
    item.querySelector(".tool")?.focus();
  });
}

/** A saved message's view: the person's as text, a reply as Markdown with its sources (also the shared page's,
 * shared.js). */
export function savedMessageView(message) {
  const item = messageView(message.role);
  item.dataset.id = message.id;
  const body = item.querySelector(".message-body");
  const bubble = body.querySelector(".bubble");
  if (message.role === "Human") {
    bubble.textContent = message.message;
  } else {
    item.dataset.state = "saved";
    renderAssistantText(bubble, message.message, message.citations, message.sources);
    if (Array.isArray(message.sources) && message.sources.length) body.append(sourcesView(message.sources));
  }
  body.append(metaView(clockTime(message.created_at), message.role === "Human" ? null : message.model));
  return item;
}

/** The line under a message: when it was written, the model that wrote it (a reply's; none when not known),
 * and `more` (a reply's tokens and speed). */
function metaView(time, model, more = []) {
  const meta = node("div", "meta");
  const pieces = [];
  if (time) pieces.push(time);
  if (model) {
    const name = node("span", "model-name", model);
    name.title = `Written by ${model}`;
    const said = node("span", "visually-hidden", "Model: ");
    pieces.push([said, name]);
  }
  pieces.push(...more.filter(Boolean));
  pieces.forEach((piece, index) => {
    if (index) meta.append(" · ");
    meta.append(...[].concat(piece));
  });
  return meta;
}

function noReplyView(chatId) {
  const item = messageView("Assistant");
  item.classList.add("no-reply");
  const body = item.querySelector(".message-body");
  body.append(node("div", "note info", "No reply yet."), retryButton(chatId, "Get a reply"));
  return item;
}

function retryButton(chatId, label = "Try again") {
  const buttons = node("div", "message-actions");
  const button = node("button", "button retry", label);
  button.type = "button";
  button.addEventListener("click", () => actions.startReply(chatId));
  buttons.append(button);
  return buttons;
}

/** An Assistant message's text (saved, or so far while it streams) in its bubble, as Markdown (markdown.js):
 * with a superscript [n] link to the source after each sentence the server cited (`citations`: character
 * offsets into the text). The one place that draws an Assistant message's text. */
export function renderAssistantText(bubble, text, citations, sources) {
  bubble.classList.add("markdown");
  bubble.replaceChildren(renderMarkdown(text, { citations, sources }));
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

// ---------------------------------------------------------------- replies

/** Remove what a new reply takes the place of: the "No reply yet" note, a failed reply. */
export function clearForReply() {
  el.announcer.replaceChildren(); // what was read out of the last reply
  for (const stale of el.messageList.querySelectorAll(".no-reply, .message[data-state='error']")) stale.remove();
  el.emptyState.hidden = true;
}

/** Draw a reply into the message list, if its chat is the one shown. */
export function renderReply(reply) {
  if (!state.isOpen(reply.chatId)) return;
  const follow = nearBottom();
  let item = replyViews.get(reply);
  if (!item || !item.isConnected) {
    item = messageView("Assistant");
    replyViews.set(reply, item);
    el.messageList.append(item);
    el.emptyState.hidden = true;
  }
  item.dataset.state = reply.phase;
  if (reply.messageId) item.dataset.id = reply.messageId;

  const body = item.querySelector(".message-body");
  const bubble = body.querySelector(".bubble");
  const parts = [];
  const status = replyStatus(reply);
  if (status) parts.push(status);
  if (reply.warning) parts.push(node("div", "note warning", reply.warning));
  const saved = reply.saved;
  drawReplyText(reply);
  parts.push(bubble);
  if (reply.sources && reply.sources.length) parts.push(sourcesView(reply.sources));
  if (reply.status === "error") {
    parts.push(node("div", "note error", sentence(`Error: ${reply.error}.`)), retryButton(reply.chatId));
  } else if (reply.status === "done") {
    const finish = reply.done.finish_reason;
    if (!saved) {
      const why = finish === "cancelled" ? "Stopped before any text was written." : "No reply was written.";
      parts.push(node("div", "note info", why), retryButton(reply.chatId));
    } else if (finish === "cancelled") {
      parts.push(node("div", "note info", "Stopped."));
    } else if (finish === "length") {
      parts.push(node("div", "note info", "Reached the max tokens limit."));
    }
    if (saved) parts.push(replyMeta(reply));
  } else if (reply.model) {
    parts.push(metaView(null, reply.model)); // while it is written, from the `start` event
  }
  body.replaceChildren(...parts);
  announceEnd(reply, body);
  if (follow) scrollToBottom(true);
}

/** Draw a reply's text in its bubble: at once when the reply has ended (with the citations `done` brought),
 * else at the next animation frame, once for however many tokens came meanwhile, since each draw parses the
 * whole text as Markdown again. */
function drawReplyText(reply) {
  if (reply.active) {
    if (!frames.has(reply)) frames.set(reply, requestAnimationFrame(() => drawStreamedText(reply)));
    return;
  }
  cancelAnimationFrame(frames.get(reply));
  frames.delete(reply);
  const bubble = replyViews.get(reply)?.querySelector(".bubble");
  if (!bubble) return;
  renderAssistantText(bubble, reply.text, reply.saved ? reply.saved.citations : null, reply.sources);
  announce(reply, bubble);
}

function drawStreamedText(reply) {
  frames.delete(reply);
  const bubble = replyViews.get(reply)?.querySelector(".bubble");
  if (!bubble || !bubble.isConnected || !reply.active) return;
  const follow = nearBottom();
  renderAssistantText(bubble, reply.text, null, reply.sources);
  announce(reply, bubble);
  if (follow) scrollToBottom(true);
}

/** What a screen reader hears of the open chat's reply. Its bubble is drawn anew on every frame, so a live
 * region there would read the whole text again and again; instead each block of the reply (a paragraph, a
 * heading, a list, a code block) is added to #reply-announcer, a polite live region off screen, once it is
 * finished (the next block has begun), and the rest when the reply ends, then how it ended ("Stopped.", an
 * error): the reply is read out a block at a time, each once, without cutting in on what the person does. */
function announce(reply, bubble) {
  const said = announcedOf(reply);
  const blocks = [...bubble.children];
  const finished = reply.active ? blocks.length - 1 : blocks.length;
  for (const block of blocks.slice(said.blocks, finished)) {
    // As shown (innerText: list items and table cells apart), and a code block without its head.
    say((block.classList.contains("code-block") ? block.querySelector("pre") : block).innerText);
  }
  said.blocks = Math.max(said.blocks, finished);
}

/** Once the reply has ended and its notes are drawn: read out how it ended. */
function announceEnd(reply, body) {
  const said = announcedOf(reply);
  if (reply.active || said.ended) return;
  said.ended = true;
  for (const note of body.querySelectorAll(".note:not(.warning)")) say(note.textContent);
}

function announcedOf(reply) {
  if (!announced.has(reply)) announced.set(reply, { blocks: 0, ended: false });
  return announced.get(reply);
}

function say(text) {
  if (text.trim()) el.announcer.append(node("p", null, text));
}

function replyStatus(reply) {
  if (!reply.active) return null;
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
  const parts = [];
  const usage = reply.done.usage;
  const timings = reply.done.timings;
  if (usage && usage.completion_tokens) parts.push(`${usage.completion_tokens} tokens`);
  if (timings && timings.tokens_per_second) parts.push(`${Math.round(timings.tokens_per_second)} tokens/s`);
  // The saved message names its model (null: the server did not say); a server without models, only `start`.
  const model = "model" in reply.saved ? reply.saved.model : reply.model;
  return metaView(clockTime(reply.saved.created_at), model, parts);
}

// ---------------------------------------------------------------- the composer and the layout

/** Send or Stop, as the open chat's reply and the text typed allow. */
export function updateComposer() {
  const generating = Boolean(state.activeReply());
  const focused = document.activeElement;
  el.send.hidden = generating;
  el.stop.hidden = !generating;
  el.send.disabled = state.sending || !el.input.value.trim();
  // Send and Stop take turns in one place. A button hidden or disabled under the focus would drop it to the
  // start of the page: it goes to Stop while a reply is written, else to the message box, ready for the next.
  if ((focused === el.send || focused === el.stop) && (focused.hidden || focused.disabled)) {
    (generating ? el.stop : el.input).focus();
  }
}

/** The composer and the buttons under the messages. */
export function updateControls() {
  updateComposer();
  refreshMessageTools();
}

export function autosize() {
  el.input.style.height = "auto";
  el.input.style.height = `${Math.min(el.input.scrollHeight, 200)}px`;
}

/** Show or hide the Export menu's panel. */
export function toggleExportMenu(open = el.exportPanel.hidden) {
  el.exportPanel.hidden = !open;
  el.exportToggle.setAttribute("aria-expanded", String(open));
}

export function openSidebar() {
  el.app.classList.add("sidebar-open");
  el.scrim.hidden = false;
  el.openSidebar.setAttribute("aria-expanded", "true");
}

export function closeSidebar() {
  el.app.classList.remove("sidebar-open");
  el.scrim.hidden = true;
  el.openSidebar.setAttribute("aria-expanded", "false");
}
