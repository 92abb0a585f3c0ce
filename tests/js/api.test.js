/* chatapi/static/api.js: the parts without a server (error sentences, file names, the sign-in gate). */
import assert from "node:assert/strict";
import { test } from "node:test";

import { allowSignIn, attachmentName, errorMessage, signIn, useSignInPrompt } from "../../chatapi/static/api.js";

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
