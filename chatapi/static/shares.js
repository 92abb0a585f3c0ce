/* Share links on the page: the open chat's Share button opens a panel that makes a read-only link to the chat
 * (POST /chats/<id>/shares, for a day, a week, a month or until revoked), shows its full address once with a
 * button that copies it, and lists the chat's links (GET /chats/<id>/shares) with a button that revokes each
 * (DELETE /chats/<id>/shares/<share_id>). The address is shown only once: the server keeps no copy of it.
 * Text from the server goes into the page as text (views.node), never as HTML.
 */
import { api } from "./api.js";
import { confirmAction, node, relativeTime, said, showFieldError, smallButton } from "./views.js";

const $ = (id) => document.getElementById(id);

const el = {
  open: $("share-chat"),
  dialog: $("share-dialog"),
  form: $("new-share-form"),
  expiry: $("share-expiry"),
  make: $("new-share-button"),
  made: $("new-share"),
  url: $("new-share-url"),
  copy: $("copy-share"),
  error: $("share-error"),
  list: $("share-list"),
  empty: $("share-list-empty"),
  status: $("share-status"),
  close: $("share-close"),
};

let openChat = () => null; // the chat the page shows: {id, name}, or null
let chat = null; // the chat whose links the panel shows

/** Wire the Share button and its panel; `currentChat()` gives the chat the page shows. */
export function connectShares(currentChat) {
  openChat = currentChat;
  el.open.addEventListener("click", openPanel);
  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    makeLink();
  });
  el.copy.addEventListener("click", copyLink);
  el.close.addEventListener("click", () => el.dialog.close());
  el.dialog.addEventListener("close", () => {
    hideNewLink();
    chat = null;
    el.open.focus();
  });
}

function sharesPath(...rest) {
  return [`/chats/${encodeURIComponent(chat.id)}/shares`, ...rest.map(encodeURIComponent)].join("/");
}

function openPanel() {
  chat = openChat();
  if (!chat) return;
  hideNewLink();
  showError("");
  el.status.textContent = "";
  el.list.replaceChildren();
  el.empty.hidden = true;
  el.dialog.showModal();
  el.expiry.focus();
  loadLinks();
}

function showError(message) {
  showFieldError(el.error, message, [el.expiry]);
}

function hideNewLink() {
  el.made.hidden = true;
  el.url.value = ""; // shown once: gone when the panel closes or another link is made
  el.copy.textContent = "Copy";
}

async function loadLinks() {
  const shown = chat;
  try {
    const links = await api("GET", sharesPath());
    if (chat !== shown) return; // closed, or opened for another chat, meanwhile
    el.list.replaceChildren(...links.map(linkItem));
    el.empty.hidden = links.length > 0;
  } catch (error) {
    if (chat === shown) showError(said(`Could not load the links: ${error.message}`));
  }
}

function exactTime(value) {
  const time = Date.parse(value);
  if (Number.isNaN(time)) return "";
  return new Date(time).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

/** "expires in 6 days", "expires tomorrow", or "never expires". */
function expiry(value) {
  if (!value) return "never expires";
  const days = Math.round((Date.parse(value) - Date.now()) / 86400000);
  if (days >= 2) return `expires in ${days} days`;
  return `expires ${exactTime(value)}`;
}

function linkItem(link) {
  const item = node("li", "account-item");
  item.dataset.id = link.id;
  const made = exactTime(link.created_at);
  const about = node("div", "account-about");
  const title = node("span", "account-title", `Link made ${relativeTime(link.created_at)}`);
  title.title = made;
  about.append(title, node("span", "account-meta", expiry(link.expires_at)));
  const actions = node("div", "account-actions");
  actions.append(smallButton("Revoke", `Revoke the link made ${made}`, () => revokeLink(link, made), "danger"));
  item.append(about, actions);
  return item;
}

/** POST /chats/<id>/shares: its full address is shown this once, with a button that copies it. */
async function makeLink() {
  if (!chat) return;
  const shown = chat;
  el.make.disabled = true;
  hideNewLink();
  try {
    const expires_in = el.expiry.value ? Number(el.expiry.value) : null;
    const made = await api("POST", sharesPath(), { expires_in });
    if (chat !== shown) return;
    el.url.value = new URL(made.url, location.origin).href;
    el.made.hidden = false;
    showError("");
    el.copy.focus();
    el.status.textContent = "Link made. Copy it now: it is shown this once.";
  } catch (error) {
    showError(said(`Could not make a link: ${error.message}`));
  } finally {
    el.make.disabled = false;
  }
  loadLinks();
}

async function copyLink() {
  try {
    await navigator.clipboard.writeText(el.url.value);
    el.copy.textContent = "Copied";
  } catch {
    // No clipboard (a page served over plain http to another host): the link is selected for Ctrl+C.
    el.url.select();
    el.copy.textContent = "Press Ctrl+C";
  }
}

async function revokeLink(link, made) {
  const sure = await confirmAction(
    "Revoke this link?",
    `Whoever opens the link made ${made} gets “not found” from now on. This cannot be undone.`,
    "Revoke",
  );
  if (!sure || !chat) return;
  try {
    await api("DELETE", sharesPath(link.id));
    el.status.textContent = "The link is revoked.";
    showError("");
  } catch (error) {
    showError(said(`Could not revoke the link: ${error.message}`));
  }
  await loadLinks();
  el.expiry.focus(); // its button is gone
}
