/* The models on the page: the list the chats' pickers offer (GET /models), and the Models panel, for admins or
 * for anyone while the server has no accounts: every model with its size, quantization, context and whether it
 * is loaded or the default; a form that pulls one from Hugging Face (POST /models) with a progress bar fed by
 * the pull's event stream; and Remove (DELETE /models/<id>), after a confirmation.
 *
 * Text from the server goes into the page as text (views.node), never as HTML.
 */
import { api } from "./api.js";
import { ReplyStream } from "./stream.js";
import { confirmAction, node, said, showFieldError, smallButton } from "./views.js";

const $ = (id) => document.getElementById(id);

const el = {
  open: $("open-models"),
  dialog: $("models-dialog"),
  pullForm: $("pull-form"),
  pullSource: $("pull-source"),
  pullButton: $("pull-button"),
  pullList: $("pull-list"),
  error: $("models-error"),
  list: $("model-list"),
  listEmpty: $("model-list-empty"),
  status: $("models-status"),
  close: $("models-close"),
};

let models = []; // the last answer of GET /models
const pulls = new Map(); // model id -> {id, stream, item, progress, text}: the pulls this page follows
let pullCount = 0; // names each pull's progress bar, for its label
let loadSeq = 0; // answers can come back out of order: only the latest request's is used
let hooks = { modelsChanged() {} };

/** Wire the panel; `modelsChanged(models)` runs with every new answer of GET /models (null when the server
 * lists none or could not be asked), for the chats' pickers. */
export function connectModels(appHooks) {
  hooks = { ...hooks, ...appHooks };
  bind();
}

/** Who may open the panel, as GET /me said: an admin, or anyone (`person` null) while there are no accounts. */
export function showModelsPanelTo(person) {
  el.open.hidden = Boolean(person && !person.admin);
  if (el.open.hidden && el.dialog.open) el.dialog.close();
}

/** A model's path in the API: its id's parts, each escaped (ids hold a slash, `REPO:QUANT`). */
export function modelPath(id) {
  return `/models/${String(id).split("/").map(encodeURIComponent).join("/")}`;
}

/** A size in bytes as people read it: 253 MB, 1.2 GB (powers of 1000, as Hugging Face shows them). */
export function formatSize(bytes) {
  if (typeof bytes !== "number" || !Number.isFinite(bytes) || bytes < 0) return "";
  const units = ["bytes", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = unit === 0 || value >= 10 ? 0 : 1;
  return `${value.toLocaleString(undefined, { maximumFractionDigits: digits })} ${units[unit]}`;
}

// ---------------------------------------------------------------- the list

/** Ask the server for its models (GET /models) and hand them to the pickers and the panel. */
export async function loadModels() {
  const seq = ++loadSeq;
  let answer;
  try {
    answer = await api("GET", "/models");
  } catch (error) {
    if (seq !== loadSeq) return models;
    // A server from before models (404), or nobody signed in: no pickers, and the panel says why.
    models = [];
    hooks.modelsChanged(null);
    if (el.dialog.open) showError(said(`Could not load the models: ${error.message}`));
    drawModels();
    return models;
  }
  if (seq !== loadSeq) return models; // a later answer is (or will be) the one shown
  models = answer;
  hooks.modelsChanged(models);
  drawModels();
  return models;
}

function drawModels() {
  // The default first, then by name.
  const ordered = [...models].sort((a, b) => Boolean(b.default) - Boolean(a.default) || a.id.localeCompare(b.id));
  el.list.replaceChildren(...ordered.map(modelItem));
  el.listEmpty.hidden = models.length > 0;
  // On the remote backend the models are the upstream's: pulled and removed there, not here.
  el.pullForm.hidden = models.length > 0 && models.every((model) => model.source === "remote");
}

function modelItem(model) {
  const item = node("li", "account-item model-item");
  item.dataset.id = model.id;
  const about = node("div", "account-about");
  const title = node("span", "account-title");
  title.append(node("span", "model-id", model.id));
  for (const [shown, tag] of [[model.default, "default"], [model.loaded, "loaded"]]) {
    if (shown) title.append(node("span", `tag tag-${tag}`, tag));
  }
  about.append(title, node("span", "account-meta", describe(model)));
  item.append(about);
  // Only pulled models can be removed, and not the server's default (409): no button that could only fail.
  if (!model.default && model.source === "hub") {
    const actions = node("div", "account-actions");
    actions.append(smallButton("Remove", `Remove ${model.id}`, () => removeModel(model), "danger"));
    item.append(actions);
  }
  return item;
}

/** A model's facts in one line: 253 MB · Q8_0 · 32,768 tokens of context · no chat template. */
function describe(model) {
  const facts = [formatSize(model.size), model.quantization || "quantization unknown"];
  if (model.context_length) facts.push(`${Number(model.context_length).toLocaleString()} tokens of context`);
  if (model.chat_template === false) facts.push("no chat template");
  if (model.architecture) facts.push(model.architecture);
  return facts.filter(Boolean).join(" · ");
}

// ---------------------------------------------------------------- the panel

function openPanel() {
  el.pullForm.reset();
  showError("");
  el.status.textContent = "";
  el.dialog.showModal();
  (el.pullForm.hidden ? el.close : el.pullSource).focus();
  loadModels();
}

/** Show (or clear) the panel's error; `fields` are marked with it (the source, when the pull was refused). */
function showError(message, fields = []) {
  showFieldError(el.error, message, message ? fields : [el.pullSource]);
}

/** POST /models: the pull starts on the server (202), and its progress streams into a bar here. A source being
 * pulled already (409, and not listed) is followed rather than refused. */
async function pull() {
  const source = el.pullSource.value.trim();
  if (!source) return;
  el.pullButton.disabled = true;
  try {
    const started = await api("POST", "/models", { source });
    showError("");
    el.pullForm.reset();
    follow(started.id, started.progress_url);
  } catch (error) {
    const refused = said(`Could not pull ${source}: ${error.message}`);
    const running = error.status === 409 && !models.some((model) => model.id === source);
    if (running && !pulls.has(source)) follow(source, `${modelPath(source)}/progress`, refused);
    else showError(refused, [el.pullSource]);
  } finally {
    el.pullButton.disabled = false;
  }
}

/** A pull's row: its name, a progress bar and what it has done so far. */
function pullItem(id) {
  const item = node("li", "pull-item");
  const label = node("label", "pull-label", `Pulling ${id}`);
  const progress = node("progress", "pull-progress");
  progress.id = `pull-progress-${++pullCount}`;
  label.htmlFor = progress.id;
  progress.max = 1; // indeterminate (no value) until the server says how much there is
  const text = node("span", "pull-text", "Starting…");
  item.append(label, progress, text);
  return { item, label, progress, text };
}

/** Follow a pull's event stream: `progress` fills the bar, `done` lists the model, `error` says why not.
 * `refused`: the server's 409 that made the page follow a pull it did not start, said instead when no such pull
 * runs (404: the id is not the source as typed). */
function follow(id, url, refused = null) {
  const row = pullItem(id);
  const stream = new ReplyStream(url, { events: ["progress", "done"] });
  const pulling = { id, stream, ...row };
  pulls.set(id, pulling);
  el.pullList.append(row.item);
  el.status.textContent = `Pulling ${id}.`;
  stream.addEventListener("progress", (event) => showProgress(pulling, event.data));
  stream.addEventListener("done", () => pullDone(pulling));
  stream.addEventListener("error", (event) => {
    if (refused && event.data.code === 404) {
      pullGone(pulling);
      el.status.textContent = "";
      showError(refused, [el.pullSource]);
    } else {
      pullFailed(pulling, event.data.message);
    }
  });
  // The stream closed without `done` (the server had nothing more to say): the list tells whether it came.
  stream.addEventListener("ended", async () => {
    await loadModels();
    if (models.some((model) => model.id === id)) pullDone(pulling);
    else pullFailed(pulling, "the pull stopped without finishing");
  });
  stream.addEventListener("reconnecting", () => {
    row.text.textContent = "Reconnecting…";
  });
  stream.addEventListener("unauthorized", () => pullFailed(pulling, "you are signed out"));
  stream.open();
}

function showProgress(pulling, data) {
  const { downloaded = 0, total = 0, file = "" } = data || {};
  if (total > 0) {
    pulling.progress.max = total;
    pulling.progress.value = Math.min(downloaded, total);
    pulling.text.textContent = `${formatSize(downloaded)} of ${formatSize(total)}${file ? ` (${file})` : ""}`;
  } else {
    pulling.progress.removeAttribute("value");
    pulling.text.textContent = `${formatSize(downloaded)}${file ? ` (${file})` : ""}`;
  }
}

/** The pull's row goes, and the page stops following it. */
function pullGone(pulling) {
  pulling.stream.close();
  pulls.delete(pulling.id);
  pulling.item.remove();
}

async function pullDone(pulling) {
  if (pulls.get(pulling.id) !== pulling) return;
  pullGone(pulling);
  el.status.textContent = `${pulling.id} is ready.`;
  await loadModels();
}

function pullFailed(pulling, message) {
  if (pulls.get(pulling.id) !== pulling) return;
  pulling.stream.close();
  pulls.delete(pulling.id);
  pulling.item.classList.add("failed");
  pulling.progress.remove();
  pulling.label.replaceWith(node("span", "pull-label", pulling.id));
  pulling.text.textContent = said(`Could not pull ${pulling.id}: ${message}`);
  pulling.text.classList.add("pull-error");
  const dismiss = smallButton("Dismiss", `Dismiss the failed pull of ${pulling.id}`, () => {
    pulling.item.remove();
    el.pullSource.focus();
  });
  pulling.item.append(dismiss);
  el.status.textContent = pulling.text.textContent;
}

async function removeModel(model) {
  const sure = await confirmAction(
    `Remove ${model.id}?`,
    "Its files are deleted from this server. Chats that picked it keep their messages, and answer again once " +
      "they pick another model.",
    "Remove",
  );
  if (!sure) return;
  try {
    await api("DELETE", modelPath(model.id));
    showError("");
    el.status.textContent = `${model.id} is removed.`;
  } catch (error) {
    // 409: the server's default or the bundled model, which the server keeps.
    showError(said(`Could not remove ${model.id}: ${error.message}`));
  }
  await loadModels();
  el.pullSource.focus(); // its button is gone
}

// ---------------------------------------------------------------- the controls

function bind() {
  el.open.addEventListener("click", () => {
    el.dialog.addEventListener("close", () => el.open.focus(), { once: true });
    openPanel();
  });
  el.pullForm.addEventListener("submit", (event) => {
    event.preventDefault();
    pull();
  });
  el.close.addEventListener("click", () => el.dialog.close());
}
