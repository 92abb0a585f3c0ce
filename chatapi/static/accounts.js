/* People on the page: the sign-in form (a name and password, or an API key), who is signed in (GET /me) and their
 * menu in the header: sign out, change password, their keys and, for admins, the People panel.
 *
 * Shown only when the server has accounts: GET /me answers 404 while it has none, and the page works as before.
 * Text from the server goes into the page as text (views.node), never as HTML.
 */
import { api, closeSession, openSession } from "./api.js";
import { KEYS } from "./state.js";
import {
  confirmAction,
  node,
  relativeTime,
  said,
  showError,
  showFieldError,
  showNotice,
  smallButton,
} from "./views.js";

const $ = (id) => document.getElementById(id);

const el = {
  signIn: $("sign-in"),
  signInForm: $("sign-in-form"),
  withPassword: $("sign-in-with-password"),
  withKey: $("sign-in-with-key"),
  signInName: $("sign-in-name"),
  signInPassword: $("sign-in-password"),
  signInKey: $("sign-in-key"),
  signInError: $("sign-in-error"),
  signInSwitch: $("sign-in-switch"),
  signInButton: $("sign-in-button"),
  menu: $("account-menu"),
  toggle: $("account-toggle"),
  panel: $("account-panel"),
  name: $("account-name"),
  initial: $("account-initial"),
  openPassword: $("open-password"),
  openKeys: $("open-keys"),
  openPeople: $("open-people"),
  signOut: $("sign-out"),
  passwordDialog: $("password-dialog"),
  passwordForm: $("password-form"),
  currentPassword: $("current-password"),
  newPassword: $("new-password"),
  repeatPassword: $("repeat-password"),
  passwordError: $("password-error"),
  passwordCancel: $("password-cancel"),
  passwordSave: $("password-save"),
  keysDialog: $("keys-dialog"),
  newKeyForm: $("new-key-form"),
  newKeyLabel: $("new-key-label"),
  newKeyButton: $("new-key-button"),
  newKey: $("new-key"),
  newKeyValue: $("new-key-value"),
  copyKey: $("copy-key"),
  keysError: $("keys-error"),
  keyList: $("key-list"),
  keyListEmpty: $("key-list-empty"),
  keysStatus: $("keys-status"),
  keysClose: $("keys-close"),
  peopleDialog: $("people-dialog"),
  newPersonForm: $("new-person-form"),
  newPersonName: $("new-person-name"),
  newPersonPassword: $("new-person-password"),
  newPersonAdmin: $("new-person-admin"),
  newPersonButton: $("new-person-button"),
  peopleError: $("people-error"),
  peopleList: $("people-list"),
  peopleStatus: $("people-status"),
  peopleClose: $("people-close"),
  resetDialog: $("reset-dialog"),
  resetForm: $("reset-form"),
  resetTitle: $("reset-title"),
  resetPassword: $("reset-password"),
  resetError: $("reset-error"),
  resetCancel: $("reset-cancel"),
  resetSave: $("reset-save"),
};

let store = null; // state.js's Store: how the person signed in last
let person = null; // {id, name, admin} from GET /me; null while nobody is known (or the server has no accounts)
let hooks = { signedIn() {}, personChanged() {}, personShown() {} };

/** Wire the form, the menu and the panels. `signedIn()` runs after every sign-in; `personChanged()` when it is
 * someone else than the person the page showed (their chats must go); `personShown(me)` whenever GET /me has
 * answered: the person, or null when the server has no accounts. */
export function connectAccounts(appStore, appHooks) {
  store = appStore;
  hooks = { ...hooks, ...appHooks };
  bind();
}

// ---------------------------------------------------------------- signing in

function usingKey() {
  return !el.withKey.hidden;
}

/** Name and password, or an API key: one fieldset shows (and is sent), the other is hidden and disabled. */
function signInWith(way) {
  const key = way === "key";
  el.withKey.hidden = el.withKey.disabled = !key;
  el.withPassword.hidden = el.withPassword.disabled = key;
  el.signInSwitch.textContent = key ? "Use a name and password" : "Use an API key";
  showSignInError("");
}

function firstSignInField() {
  return usingKey() ? el.signInKey : el.signInName.value ? el.signInPassword : el.signInName;
}

/** The sign-in form (api.js asks for it when the server answers 401): resolves once a session is open, rejects
 * if the person closes it. The way they signed in last comes first. */
export function askToSignIn() {
  return new Promise((resolve, reject) => {
    signInWith(store.get(KEYS.signInWith) === "key" ? "key" : "password");
    el.signInPassword.value = "";
    el.signInKey.value = "";
    el.signIn.returnValue = "";
    el.signIn.addEventListener(
      "close",
      () => {
        if (el.signIn.returnValue === "signed-in") resolve();
        else reject(new Error("the sign-in form was closed"));
      },
      { once: true },
    );
    el.signIn.showModal();
    firstSignInField().focus();
  });
}

async function submitSignIn() {
  const key = usingKey();
  const credentials = key
    ? { key: el.signInKey.value.trim() }
    : { name: el.signInName.value.trim().toLowerCase(), password: el.signInPassword.value };
  if (key ? !credentials.key : !credentials.name || !credentials.password) return;
  el.signInButton.disabled = true;
  try {
    await openSession(credentials);
  } catch (error) {
    if (error.status === 401) showSignInError(key ? "That key is not valid." : "That name and password do not match.");
    else if (error.status === 0) showSignInError("The server cannot be reached.");
    else showSignInError(said(error.message));
    (key ? el.signInKey : el.signInPassword).select();
    return;
  } finally {
    el.signInButton.disabled = false;
  }
  store.set(KEYS.signInWith, key ? "key" : "password");
  el.signInPassword.value = "";
  el.signInKey.value = "";
  el.signIn.close("signed-in");
  hooks.signedIn();
  loadPerson();
}

function showSignInError(message) {
  showFieldError(el.signInError, message, [el.signInName, el.signInPassword, el.signInKey]);
}

// ---------------------------------------------------------------- who is signed in

/** Ask the server who is signed in (GET /me) and show them in the header; no menu while it has no accounts. */
export async function loadPerson() {
  let me;
  try {
    me = await api("GET", "/me");
  } catch (error) {
    if (error.status === 404) showPerson(null); // no accounts on this server: the page works as it always did
    return; // 401 and the form closed, or the server away: the header stays as it was
  }
  const before = person;
  showPerson(me);
  if (before && before.id !== me.id) hooks.personChanged();
}

function showPerson(me) {
  person = me;
  el.menu.hidden = !me;
  hooks.personShown(me);
  // Asked again after every sign-in: an answer that comes in while the menu is open leaves it open.
  if (!me) {
    toggleMenu(false);
    return;
  }
  el.name.textContent = me.name;
  el.initial.textContent = me.name.charAt(0).toUpperCase();
  el.toggle.title = `Signed in as ${me.name}`;
  el.openPeople.hidden = !me.admin;
}

/** Show or hide the account menu's panel. */
function toggleMenu(open = el.panel.hidden) {
  el.panel.hidden = !open;
  el.toggle.setAttribute("aria-expanded", String(open));
}

/** Close the menu and open one of its dialogs; the focus comes back to the menu's button when it closes. */
function openFromMenu(dialog, focus) {
  toggleMenu(false);
  el.toggle.focus();
  dialog.addEventListener("close", () => el.toggle.focus(), { once: true });
  dialog.showModal();
  focus.focus();
}

/** Sign out (DELETE /session), then start again from a clean page, which asks who is there: nothing of this
 * person's stays in it. */
async function signOut() {
  toggleMenu(false);
  try {
    await closeSession();
  } catch (error) {
    showError(`Could not sign out: ${error.message}.`);
    return;
  }
  location.assign(location.pathname + location.search); // without the #chat= of this person's chat
}

// ---------------------------------------------------------------- change password

function openPasswordDialog() {
  el.passwordForm.reset();
  showFieldError(el.passwordError, "", [el.currentPassword, el.newPassword, el.repeatPassword]);
  openFromMenu(el.passwordDialog, el.currentPassword);
}

/** PUT /me/password. The server ends every session of the person but this page's, which gets a new cookie. */
async function changePassword() {
  const fields = [el.currentPassword, el.newPassword, el.repeatPassword];
  if (el.newPassword.value !== el.repeatPassword.value) {
    showFieldError(el.passwordError, "The new passwords are not the same.", [el.newPassword, el.repeatPassword]);
    el.repeatPassword.focus();
    return;
  }
  el.passwordSave.disabled = true;
  try {
    // A 401 here is the current password being wrong: said in the dialog, not a sign-in.
    const body = { current_password: el.currentPassword.value, password: el.newPassword.value };
    await api("PUT", "/me/password", body, { signIn: false });
  } catch (error) {
    const wrong = error.status === 401 || error.status === 403;
    showFieldError(el.passwordError, said(error.message), wrong ? [el.currentPassword] : fields);
    (wrong ? el.currentPassword : el.newPassword).select();
    return;
  } finally {
    el.passwordSave.disabled = false;
  }
  el.passwordDialog.close();
  showNotice("Your password is changed. Everywhere else you were signed in, you are signed out.");
}

// ---------------------------------------------------------------- my keys

function openKeysDialog() {
  el.newKeyForm.reset();
  hideNewKey();
  showFieldError(el.keysError, "", [el.newKeyLabel]);
  el.keysStatus.textContent = "";
  openFromMenu(el.keysDialog, el.newKeyLabel);
  loadKeys();
}

function hideNewKey() {
  el.newKey.hidden = true;
  el.newKeyValue.value = ""; // shown once: gone when the dialog closes or another key is made
  el.copyKey.textContent = "Copy";
}

async function loadKeys() {
  try {
    showKeys(await api("GET", "/me/keys"));
  } catch (error) {
    showFieldError(el.keysError, said(`Could not load your keys: ${error.message}`));
  }
}

function showKeys(keys) {
  // Working keys first, newest first; revoked ones after them.
  const ordered = [...keys].sort(
    (a, b) => Boolean(a.revoked_at) - Boolean(b.revoked_at) || String(b.created_at).localeCompare(a.created_at),
  );
  el.keyList.replaceChildren(...ordered.map(keyItem));
  el.keyListEmpty.hidden = keys.length > 0;
}

function keyItem(key) {
  const item = node("li", "account-item");
  item.dataset.id = key.id;
  const label = key.label || "No label";
  const about = node("div", "account-about");
  const title = node("span", "account-title");
  title.append(node("span", "key-label", label), node("code", "key-prefix", `${key.prefix}…`));
  const made = `made ${relativeTime(key.created_at)}`;
  const used = key.last_used_at ? `last used ${relativeTime(key.last_used_at)}` : "never used";
  const meta = key.revoked_at ? `revoked ${relativeTime(key.revoked_at)}` : `${made}, ${used}`;
  about.append(title, node("span", "account-meta", meta));
  item.append(about);
  if (key.revoked_at) {
    item.classList.add("revoked");
  } else {
    const actions = node("div", "account-actions");
    actions.append(smallButton("Revoke", `Revoke ${label}`, () => revokeKey(key, label), "danger"));
    item.append(actions);
  }
  return item;
}

/** POST /me/keys: the key is shown this once, with a button that copies it. */
async function makeKey() {
  el.newKeyButton.disabled = true;
  hideNewKey();
  try {
    const made = await api("POST", "/me/keys", { label: el.newKeyLabel.value.trim() });
    el.newKeyValue.value = made.key;
    el.newKey.hidden = false;
    el.newKeyForm.reset();
    showFieldError(el.keysError, "", [el.newKeyLabel]);
    el.copyKey.focus();
    el.keysStatus.textContent = "Key made. Copy it now: it is shown this once.";
  } catch (error) {
    showFieldError(el.keysError, said(`Could not make a key: ${error.message}`), [el.newKeyLabel]);
  } finally {
    el.newKeyButton.disabled = false;
  }
  loadKeys();
}

async function copyKey() {
  try {
    await navigator.clipboard.writeText(el.newKeyValue.value);
    el.copyKey.textContent = "Copied";
  } catch {
    // No clipboard (a page served over plain http to another host): the key is selected for Ctrl+C.
    el.newKeyValue.select();
    el.copyKey.textContent = "Press Ctrl+C";
  }
}

async function revokeKey(key, label) {
  const sure = await confirmAction(
    `Revoke “${label}”?`,
    "Programs that use this key are refused from now on. This cannot be undone.",
    "Revoke",
  );
  if (!sure) return;
  try {
    await api("DELETE", `/me/keys/${encodeURIComponent(key.id)}`);
    el.keysStatus.textContent = `${label} is revoked.`;
    showFieldError(el.keysError, "");
  } catch (error) {
    showFieldError(el.keysError, said(`Could not revoke ${label}: ${error.message}`));
  }
  await loadKeys();
  el.newKeyLabel.focus(); // its button is gone
}

// ---------------------------------------------------------------- people (admins)

function openPeopleDialog() {
  el.newPersonForm.reset();
  showPeopleError("");
  el.peopleStatus.textContent = "";
  openFromMenu(el.peopleDialog, el.newPersonName);
  loadPeople();
}

function showPeopleError(message, fields = []) {
  showFieldError(el.peopleError, message, fields);
}

async function loadPeople() {
  try {
    const people = await api("GET", "/users");
    el.peopleList.replaceChildren(...people.map(personItem));
  } catch (error) {
    showPeopleError(said(`Could not load the people: ${error.message}`));
  }
}

function personItem(someone) {
  const item = node("li", "account-item");
  item.dataset.id = someone.id;
  const about = node("div", "account-about");
  const title = node("span", "account-title");
  title.append(node("span", "person-name", someone.name));
  const you = person && person.id === someone.id;
  for (const [shown, tag] of [[someone.admin, "admin"], [you, "you"], [someone.disabled_at, "disabled"]]) {
    if (shown) title.append(node("span", `tag tag-${tag}`, tag));
  }
  about.append(title, node("span", "account-meta", `added ${relativeTime(someone.created_at)}`));
  item.classList.toggle("revoked", Boolean(someone.disabled_at));

  const name = someone.name;
  const actions = node("div", "account-actions");
  const change = (changes, done) => () => updatePerson(someone, changes, done);
  const able = someone.disabled_at
    ? smallButton("Enable", `Enable ${name}`, change({ disabled: false }, `${name} can sign in again.`))
    : smallButton("Disable", `Disable ${name}`, () => disablePerson(someone));
  const rank = someone.admin
    ? smallButton("Remove admin", `Remove admin from ${name}`, change({ admin: false }, `${name} is no admin now.`))
    : smallButton("Make admin", `Make admin: ${name}`, change({ admin: true }, `${name} is an admin.`));
  actions.append(
    able,
    rank,
    smallButton("Reset password", `Reset password for ${name}`, () => openResetDialog(someone)),
    smallButton("Delete", `Delete ${name}`, () => deletePerson(someone), "danger"),
  );
  item.append(about, actions);
  return item;
}

/** POST /users: the new person signs in with the name and password given here. */
async function addPerson() {
  const body = {
    name: el.newPersonName.value.trim().toLowerCase(),
    password: el.newPersonPassword.value,
    admin: el.newPersonAdmin.checked,
  };
  el.newPersonButton.disabled = true;
  try {
    const added = await api("POST", "/users", body);
    el.newPersonForm.reset();
    showPeopleError("");
    el.peopleStatus.textContent = `${added.name} is added.`;
    el.newPersonName.focus();
  } catch (error) {
    showPeopleError(said(`Could not add ${body.name}: ${error.message}`), [el.newPersonName, el.newPersonPassword]);
  } finally {
    el.newPersonButton.disabled = false;
  }
  loadPeople();
}

async function disablePerson(someone) {
  const sure = await confirmAction(
    `Disable ${someone.name}?`,
    "They are signed out everywhere and their keys stop working until they are enabled again. Their chats stay.",
    "Disable",
  );
  if (sure) await updatePerson(someone, { disabled: true }, `${someone.name} is disabled.`);
}

/** PUT /users/<id>, then the list again; the focus goes back to the person's row. */
async function updatePerson(someone, changes, done) {
  const action = focusedAction();
  try {
    await api("PUT", `/users/${encodeURIComponent(someone.id)}`, changes);
    showPeopleError("");
    el.peopleStatus.textContent = done;
  } catch (error) {
    showPeopleError(said(`Could not change ${someone.name}: ${error.message}`));
  }
  if (person && person.id === someone.id) loadPerson(); // no admin any more: no People in the menu
  await loadPeople();
  focusPerson(someone.id, action);
}

/** Which of its row's buttons has the focus (the list is drawn anew after each change): its place, or 0. */
function focusedAction() {
  const focused = document.activeElement;
  const row = focused && focused.closest(".account-item");
  return row ? Math.max(0, [...row.querySelectorAll("button")].indexOf(focused)) : 0;
}

/** The focus back on the person's row, on the button in the same place (Disable and Enable take turns there);
 * on the Name field when the row is gone. */
function focusPerson(id, action) {
  const row = [...el.peopleList.children].find((item) => item.dataset.id === String(id));
  (row ? row.querySelectorAll("button")[action] || row.querySelector("button") : el.newPersonName).focus();
}

async function deletePerson(someone) {
  const sure = await confirmAction(
    `Delete ${someone.name}?`,
    `${someone.name}, their keys and all their chats will be deleted. This cannot be undone.`,
    "Delete",
  );
  if (!sure) return;
  const action = focusedAction();
  try {
    await api("DELETE", `/users/${encodeURIComponent(someone.id)}`);
    showPeopleError("");
    el.peopleStatus.textContent = `${someone.name} is deleted.`;
  } catch (error) {
    // 409: the last admin, whom the server keeps.
    showPeopleError(said(`Could not delete ${someone.name}: ${error.message}`));
  }
  await loadPeople();
  focusPerson(someone.id, action);
}

let resetting = null; // the person whose password the reset dialog sets
const RESET_ACTION = 2; // the place of Reset password among a row's buttons (personItem)

function openResetDialog(someone) {
  resetting = someone;
  el.resetForm.reset();
  el.resetTitle.textContent = `Reset password for ${someone.name}`;
  showFieldError(el.resetError, "", [el.resetPassword]);
  el.resetDialog.showModal();
  el.resetPassword.focus();
}

async function resetPassword() {
  const someone = resetting;
  el.resetSave.disabled = true;
  try {
    await api("PUT", `/users/${encodeURIComponent(someone.id)}`, { password: el.resetPassword.value });
  } catch (error) {
    showFieldError(el.resetError, said(error.message), [el.resetPassword]);
    el.resetPassword.select();
    return;
  } finally {
    el.resetSave.disabled = false;
  }
  el.resetDialog.close();
  el.peopleStatus.textContent = `The password for ${someone.name} is changed.`;
  showPeopleError("");
  await loadPeople();
  focusPerson(someone.id, RESET_ACTION);
}

// ---------------------------------------------------------------- the controls

function onSubmit(form, action) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    action();
  });
}

function bind() {
  onSubmit(el.signInForm, submitSignIn);
  el.signInSwitch.addEventListener("click", () => {
    signInWith(usingKey() ? "password" : "key");
    firstSignInField().focus();
  });
  el.toggle.addEventListener("click", () => toggleMenu());
  document.addEventListener("click", (event) => {
    if (!el.menu.contains(event.target)) toggleMenu(false);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !el.panel.hidden) {
      toggleMenu(false);
      el.toggle.focus();
    }
  });
  el.openPassword.addEventListener("click", openPasswordDialog);
  el.openKeys.addEventListener("click", openKeysDialog);
  el.openPeople.addEventListener("click", openPeopleDialog);
  el.signOut.addEventListener("click", signOut);

  onSubmit(el.passwordForm, changePassword);
  el.passwordCancel.addEventListener("click", () => el.passwordDialog.close());

  onSubmit(el.newKeyForm, makeKey);
  el.copyKey.addEventListener("click", copyKey);
  el.keysClose.addEventListener("click", () => el.keysDialog.close());
  el.keysDialog.addEventListener("close", hideNewKey);

  onSubmit(el.newPersonForm, addPerson);
  el.peopleClose.addEventListener("click", () => el.peopleDialog.close());
  onSubmit(el.resetForm, resetPassword);
  el.resetCancel.addEventListener("click", () => el.resetDialog.close());
}
