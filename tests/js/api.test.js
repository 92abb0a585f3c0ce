/* chatapi/static/api.js: the parts without a server (error sentences, file names, the sign-in gate, sessions), with
 * a fake fetch in place of the browser's. */
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import {
  allowSignIn,
  api,
  apiPage,
  attachmentName,
  closeSession,
  errorMessage,
  openSession,
  signIn,
  useSignInPrompt,
} from "../../chatapi/static/api.js";
import { fakeFetch, jsonResponse } from "./fakes.js";

const realFetch = globalThis.fetch;
afterEach(() => {
  globalThis.fetch = realFetch;
});

test("errorMessage: a 422's fields, else the message, else the status", () => {
  const invalid = {
    code: 422,
    message: "invalid conversations.1.role, name",
    errors: { "conversations.1.role": ["Must be one of: Human, Assistant."], name: ["Too long.", "Blank."] },
  };
  assert.equal(
    errorMessage(invalid, 422),
    "conversations.1.role: Must be one of: Human, Assistant.; name: Too long. Blank.",
  );
  assert.equal(errorMessage({ message: "chat 3fa8 not found" }, 404), "chat 3fa8 not found");
  assert.equal(errorMessage({ errors: {}, message: "bad body" }, 400), "bad body");
  assert.equal(errorMessage(null, 502), "the server answered 502");
});

test("attachmentName: RFC 6266's UTF-8 name first, then the quoted or bare one", () => {
  assert.equal(attachmentName(`attachment; filename="chat.json"`), "chat.json");
  assert.equal(attachmentName(`attachment; filename=chat.md`), "chat.md");
  assert.equal(attachmentName(`attachment; filename="a \\"quoted\\" name.md"`), 'a "quoted" name.md');
  assert.equal(
    attachmentName(`attachment; filename="Caf_.md"; filename*=UTF-8''Caf%C3%A9%20notes.md`),
    "Café notes.md",
  );
  assert.equal(attachmentName(`attachment; filename="plain.md"; filename*=UTF-8''%E0%A4%A.md`), "plain.md");
  assert.equal(attachmentName("attachment"), null);
  assert.equal(attachmentName(null), null);
});

test("signIn: one prompt for every waiting request; once closed, no other until allowed", async () => {
  let asked = 0;
  let answer = null;
  useSignInPrompt(() => {
    asked += 1;
    return new Promise((resolve, reject) => {
      answer = { resolve, reject };
    });
  });
  const first = signIn();
  const second = signIn();
  assert.equal(asked, 1);
  answer.resolve();
  await Promise.all([first, second]);

  const refused = signIn();
  assert.equal(asked, 2);
  answer.reject(new Error("closed"));
  await assert.rejects(refused, { status: 401, message: "an API key is needed" });
  await assert.rejects(signIn(), { status: 401 });
  assert.equal(asked, 2, "a closed prompt does not open again by itself");

  allowSignIn();
  const again = signIn();
  assert.equal(asked, 3);
  answer.resolve();
  await again;
});

test("openSession: a name and password or a key, as JSON; a refusal is an ApiError with the server's message", async () => {
  globalThis.fetch = fakeFetch(
    new Response(null, { status: 204 }),
    new Response(null, { status: 204 }),
    jsonResponse(401, { code: 401, message: "the name or the password is wrong" }),
    new TypeError("offline"),
  );
  await openSession({ name: "ana", password: "secret words" });
  await openSession({ key: "chatapi-abc" });
  const [byPassword, byKey] = globalThis.fetch.calls;
  assert.deepEqual([byPassword.url, byPassword.init.method], ["/session", "POST"]);
  assert.deepEqual(JSON.parse(byPassword.init.body), { name: "ana", password: "secret words" });
  assert.equal(byPassword.init.headers["Content-Type"], "application/json");
  assert.deepEqual(JSON.parse(byKey.init.body), { key: "chatapi-abc" });
  await assert.rejects(openSession({ name: "ana", password: "wrong" }), {
    status: 401,
    message: "the name or the password is wrong",
  });
  await assert.rejects(openSession({ key: "k" }), { status: 0, message: "the server cannot be reached" });
});

test("closeSession: DELETE /session, no body; a 401 there asks nobody to sign in", async () => {
  let asked = 0;
  useSignInPrompt(() => {
    asked += 1;
    return Promise.resolve();
  });
  globalThis.fetch = fakeFetch(new Response(null, { status: 204 }), jsonResponse(401, { message: "no session" }));
  await closeSession();
  const [call] = globalThis.fetch.calls;
  assert.deepEqual([call.url, call.init.method, call.init.body], ["/session", "DELETE", undefined]);
  await assert.rejects(closeSession(), { status: 401 });
  assert.equal(asked, 0);
});

test("api with signIn false: a 401 is the answer (a wrong current password), not a reason to sign in", async () => {
  let asked = 0;
  useSignInPrompt(() => {
    asked += 1;
    return Promise.resolve();
  });
  allowSignIn();
  globalThis.fetch = fakeFetch(
    jsonResponse(401, { message: "the current password is wrong" }),
    jsonResponse(401, { message: "sign in" }),
    jsonResponse(200, { id: 1, name: "ana", admin: false }),
  );
  await assert.rejects(api("PUT", "/me/password", { current_password: "x", password: "y" }, { signIn: false }), {
    status: 401,
    message: "the current password is wrong",
  });
  assert.equal(asked, 0);
  // Without it, the same 401 asks to sign in and sends the request again.
  assert.deepEqual(await api("GET", "/me"), { id: 1, name: "ana", admin: false });
  assert.equal(asked, 1);
  assert.equal(globalThis.fetch.calls.length, 3);
});

test("apiPage: the list and X-Total-Count; an aborted request rejects with the AbortError, not as unreachable", async () => {
  const page = new Response(JSON.stringify([{ id: 1 }]), { status: 200, headers: { "X-Total-Count": "41" } });
  globalThis.fetch = fakeFetch(page, jsonResponse(200, []));
  assert.deepEqual(await apiPage("/search?q=fox"), { items: [{ id: 1 }], total: 41 });
  assert.deepEqual(await apiPage("/search?q=fox"), { items: [], total: null });
  assert.equal(globalThis.fetch.calls[0].url, "/search?q=fox");

  const controller = new AbortController();
  globalThis.fetch = (url, init) =>
    new Promise((resolve, reject) => {
      init.signal.addEventListener("abort", () => reject(init.signal.reason));
    });
  const pending = apiPage("/search?q=fox", { signal: controller.signal });
  controller.abort();
  await assert.rejects(pending, { name: "AbortError" });

  globalThis.fetch = fakeFetch(new TypeError("Failed to fetch"));
  await assert.rejects(apiPage("/search?q=fox", { signal: new AbortController().signal }), { status: 0 });
});
