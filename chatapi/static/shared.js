/* A shared chat (GET /s/<token>): the chat as it was when the link was made, read-only, drawn as the chat page
 * draws its messages (views.js, markdown.js). Its export document comes from the same address, ?format=json;
 * no key or session is needed, and nothing here can change anything.
 */
import { savedMessageView, showError } from "./views.js";

const $ = (id) => document.getElementById(id);

/** The export document of the shared chat: {chatapi_export, chat, conversations}. */
async function loadSharedChat() {
  const response = await fetch(`${location.pathname}?format=json`, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error((body && body.message) || `the server answered ${response.status}`);
  return body;
}

function dateTime(value) {
  const time = Date.parse(value);
  if (Number.isNaN(time)) return "";
  return new Date(time).toLocaleString(undefined, { dateStyle: "long", timeStyle: "short" });
}

function show(document_) {
  const { chat, conversations } = document_;
  $("chat-title").textContent = chat.name;
  document.title = `${chat.name} · shared chat`;
  const updated = dateTime(chat.updated_at);
  if (updated) {
    $("shared-about").textContent = `A copy of a chat on this server, as it was on ${updated}: what was said in it `
      + "afterwards does not show.";
  }
  $("system-prompt").hidden = !chat.system_prompt;
  $("system-prompt-text").textContent = chat.system_prompt || "";
  $("message-list").replaceChildren(
    ...conversations.map((message) => {
      const item = savedMessageView(message);
      delete item.dataset.id; // an export has no ids
      return item;
    }),
  );
  $("shared-empty").hidden = conversations.length > 0;
}

async function start() {
  try {
    show(await loadSharedChat());
  } catch (error) {
    showError(`Could not load the shared chat: ${error.message}.`);
  } finally {
    $("messages").setAttribute("aria-busy", "false");
  }
}

start();
