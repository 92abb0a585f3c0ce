"""The Share item of the chat's header in headless Chromium, on a server with a key (issue 26): the person makes a
link, copies it; a stranger (another browser context: no key, no session) opens it and reads the chat drawn as
the chat page draws it (Markdown, sources and citations), without anything that acts; later messages do not show;
the link is revoked and the stranger gets a 404. axe-core finds nothing serious in the panel or the shared page."""

import re

import requests
from playwright.sync_api import expect

from tests.support.page import CITED, PAGE_KEY, SOURCES, check_axe, keyed_chat, save_answer, sign_in

QUESTION = "Tell me about the volcano."
MARKDOWN = "# Volcano notes\n\nSome *emphasis* and `inline code`.\n\n```python\nprint('boom')\n```"
CITATIONS = [{"start": 2, "end": 46, "n": 1}, {"start": 52, "end": 84, "n": 2}]


def test_a_link_made_on_the_page_shows_the_chat_to_a_stranger_until_it_is_revoked(open_tab, keyed_server, app):
    base = keyed_server
    chat_id = keyed_chat(base, QUESTION)
    save_answer(app, chat_id, MARKDOWN)
    save_answer(app, chat_id, CITED, SOURCES, CITATIONS)
    tab = open_tab(base, permissions=["clipboard-read", "clipboard-write"])
    page = tab.page
    page.goto(f"/#chat={chat_id}")
    sign_in(page)
    expect(page.locator("#message-list .message")).to_have_count(3)

    page.get_by_role("button", name="Share chat").click()
    panel = page.get_by_role("dialog", name="Share this chat")
    expect(panel).to_be_visible()
    expect(panel.get_by_label("Link works for")).to_be_focused()
    expect(panel.locator("#share-list-empty")).to_have_text("No links yet.")
    check_axe(page)

    panel.get_by_label("Link works for").select_option(label="1 day")
    panel.get_by_role("button", name="Make a link").click()
    url_field = panel.get_by_label("Your new link")
    expect(url_field).to_have_value(re.compile(rf"^{re.escape(base)}/s/[A-Za-z0-9_-]{{43}}$"))
    expect(panel.get_by_role("button", name="Copy")).to_be_focused()
    link = url_field.input_value()
    panel.get_by_role("button", name="Copy").click()
    expect(panel.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == link
    items = panel.locator("#share-list .account-item")
    expect(items).to_have_count(1)
    expect(items.first.locator(".account-meta")).to_contain_text("expires")
    check_axe(page)

    # Said after the link was made: the stranger does not see it.
    headers = {"Authorization": f"Bearer {PAGE_KEY}"}
    body = {"chat_id": chat_id, "role": "Human", "message": "A later secret."}
    assert requests.post(f"{base}/conversations/create", json=body, headers=headers, timeout=10).status_code == 201

    stranger = open_tab(base)
    shared = stranger.page
    shown = shared.goto(link)
    assert shown.status == 200 and shown.headers["referrer-policy"] == "no-referrer"
    expect(shared.locator("#chat-title")).to_have_text("keyed")
    messages = shared.locator("#message-list .message")
    expect(messages).to_have_count(3)
    expect(messages.nth(0).locator(".bubble")).to_have_text(QUESTION)
    expect(messages.nth(1).locator(".bubble h1")).to_have_text("Volcano notes")
    expect(messages.nth(1).locator(".code-block")).to_be_visible()
    expect(messages.nth(2).locator("sup.citation a")).to_have_count(2)
    expect(messages.nth(2).locator(".sources .source-link")).to_have_text([s["title"] for s in SOURCES])
    expect(shared.locator("body")).not_to_contain_text("A later secret.")
    # Read-only: nothing to type into, no Edit or Regenerate, no sign-in asked for.
    expect(shared.locator("textarea, input, .message-tools, dialog[open]")).to_have_count(0)
    assert stranger.context.cookies() == []
    check_axe(shared)

    # Revoked from the panel (after a confirmation): the stranger's next visit is a 404.
    items.first.get_by_role("button", name="Revoke").click()
    confirm = page.get_by_role("dialog", name="Revoke this link?")
    confirm.get_by_role("button", name="Revoke").click()
    expect(items).to_have_count(0)
    expect(panel.locator("#share-status")).to_have_text("The link is revoked.")
    gone = shared.goto(link)
    assert gone.status == 404
    assert gone.json()["message"] == "this share link does not exist, has expired or was revoked"
    panel.get_by_role("button", name="Close").click()
    expect(panel).to_be_hidden()
    expect(page.get_by_role("button", name="Share chat")).to_be_focused()
