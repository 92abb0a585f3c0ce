"""The page's accessibility in headless Chromium against the real server and model: axe-core (from npm, pinned in
package.json) finds no serious or critical violation in the page's states, and the keyboard alone can create a
chat, send, stop a reply and move between chats."""

import pytest
from playwright.sync_api import Page, expect

from tests.support.chats import ENDLESS, GREEDY, LONG_QUESTION, QUESTION, history, new_chat
from tests.support.page import CITED, FEATURES, SOURCES, check_axe, last_reply, save_answer, wait_for_reply_text

ENDLESS_START = ENDLESS[:-1]


def chat_with_markdown_and_sources(base: str, app) -> str:
    """A chat with a Markdown reply (code, a table, links) and an internet answer with sources and citations."""
    chat_id = new_chat(base, "Some notes, please.", FEATURES, "And the sources?")
    citations = [{"start": 2, "end": 46, "n": 1}, {"start": 52, "end": 84, "n": 2}]
    save_answer(app, chat_id, CITED, SOURCES, citations)
    return chat_id


def test_axe_finds_nothing_serious_with_no_chat_open(tab, page_server):
    for name in ("Groceries", "Trip plans"):
        new_chat(page_server, name)
    page = tab.page
    page.goto("/")
    expect(page.locator("#model-status")).to_have_attribute("data-status", "ok")
    expect(page.locator("#chat-list .chat-item")).to_have_count(2)
    expect(page.locator("#empty-state")).to_be_visible()
    check_axe(page)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_with_a_chat_open_its_markdown_sources_and_menus(open_tab, page_server, app, scheme):
    chat_id = chat_with_markdown_and_sources(page_server, app)
    tab = open_tab(page_server, color_scheme=scheme)
    page = tab.page
    page.goto(f"/#chat={chat_id}")
    expect(page.locator("#model-status")).to_have_attribute("data-status", "ok")
    expect(page.locator("#message-list .message")).to_have_count(4)
    expect(page.locator("#message-list .code-block")).to_be_visible()
    expect(page.locator("#message-list sup.citation a")).to_have_count(2)
    check_axe(page)

    # The menus and panels the chat's buttons open.
    page.get_by_role("button", name="Export chat").click()
    expect(page.get_by_role("button", name="Export as JSON")).to_be_visible()
    page.locator("#settings summary").click()
    expect(page.locator("#max-tokens")).to_be_visible()
    check_axe(page)


def test_axe_finds_nothing_serious_with_the_chat_settings_and_delete_dialogs_open(tab, page_server, app):
    chat_id = chat_with_markdown_and_sources(page_server, app)
    page = tab.page
    page.goto(f"/#chat={chat_id}")
    expect(page.locator("#message-list .message")).to_have_count(4)
    page.get_by_role("button", name="Chat settings").click()
    settings = page.get_by_role("dialog", name="Chat settings")
    expect(settings).to_be_visible()
    settings.get_by_role("textbox", name="System prompt").fill("x" * 65_537)
    settings.get_by_role("button", name="Save").click()  # and with the error it shows
    expect(settings.get_by_role("alert")).to_contain_text("Longer than maximum length")
    check_axe(page)
    page.keyboard.press("Escape")
    expect(settings).to_be_hidden()

    page.get_by_role("button", name="Delete chat").click()
    expect(page.get_by_role("dialog", name="Delete chat?")).to_be_visible()
    check_axe(page)


def test_axe_finds_nothing_serious_while_a_reply_streams(tab, page_server):
    chat_id = new_chat(page_server, *ENDLESS)
    page = tab.page
    page.goto(f"/?max_tokens=400&{GREEDY}#chat={chat_id}")
    page.get_by_role("button", name="Get a reply").click()
    reply = last_reply(page)
    wait_for_reply_text(page, 20)
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    check_axe(page)
    # Still streaming when axe was done: it looked at the page mid-reply.
    assert reply.get_attribute("data-state") == "streaming"
    page.get_by_role("button", name="Stop").click()
    expect(reply).to_have_attribute("data-state", "stopped")


def focused(page: Page) -> str:
    """The focused element, described: its tag, id, class and text or label."""
    return page.evaluate("""() => {
      const element = document.activeElement;
      const name = element.getAttribute("aria-label") || element.textContent.trim().slice(0, 40);
      return `${element.tagName.toLowerCase()}#${element.id}.${element.className} ${name}`;
    }""")


def tab_to(page: Page, locator, key: str = "Tab", most: int = 40) -> None:
    """Press Tab (or Shift+Tab) until `locator` has the focus."""
    seen = []
    for _ in range(most):
        if locator.evaluate("(element) => element === document.activeElement"):
            return
        page.keyboard.press(key)
        seen.append(focused(page))
    pytest.fail(f"{key} never reached {locator}; it went through {seen}")


def test_the_keyboard_alone_creates_a_chat_sends_stops_a_reply_and_moves_between_chats(tab, page_server):
    endless = new_chat(page_server, *ENDLESS_START)  # a history the model answers at length
    page = tab.page
    page.goto(f"/?max_tokens=400&{GREEDY}")
    expect(page.locator("#model-status")).to_have_attribute("data-status", "ok")
    expect(page.locator("#chat-list .chat-item")).to_have_count(1)

    # A new chat: its button from the start of the page, then the message, sent with Enter.
    tab_to(page, page.get_by_role("button", name="New chat"))
    page.keyboard.press("Enter")
    expect(page.locator("#chat-list .chat-item")).to_have_count(2)
    message = page.get_by_role("textbox", name="Message")
    expect(message).to_be_focused()
    created = page.locator("#chat-list .chat-item.active").get_attribute("data-id")
    page.keyboard.type(QUESTION)
    page.keyboard.press("Enter")
    expect(last_reply(page)).to_have_attribute("data-state", "done")
    assert [m["role"] for m in history(page_server, created)] == ["Human", "Assistant"]
    expect(message).to_be_focused()

    # Back to the chat list, and down to the other chat: it opens with Enter, and the focus stays on it.
    opened = page.locator("#chat-list .chat-item.active .chat-open")
    tab_to(page, opened, "Shift+Tab")
    page.keyboard.press("ArrowDown")
    other = page.locator(f"#chat-list .chat-item[data-id='{endless}'] .chat-open")
    expect(other).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#message-list .message")).to_have_count(2)
    assert page.url.endswith(f"#chat={endless}")
    expect(other).to_be_focused()
    # Up, and with Tab past a chat's Rename and Delete buttons to the next chat.
    page.keyboard.press("ArrowUp")
    first = page.locator(f"#chat-list .chat-item[data-id='{created}'] .chat-open")
    expect(first).to_be_focused()
    for button in (".chat-rename", ".chat-delete"):
        page.keyboard.press("Tab")
        expect(page.locator(f"#chat-list .chat-item[data-id='{created}'] {button}")).to_be_focused()
    page.keyboard.press("Tab")
    expect(other).to_be_focused()

    # A long reply, stopped with the Stop button reached by Tab; the focus goes back to the message box.
    tab_to(page, message)
    page.keyboard.type(LONG_QUESTION)
    page.keyboard.press("Enter")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "streaming")
    wait_for_reply_text(page, 20)
    stop = page.get_by_role("button", name="Stop")
    tab_to(page, stop)
    page.keyboard.press("Enter")
    expect(reply).to_have_attribute("data-state", "stopped")
    expect(message).to_be_focused()
    saved = history(page_server, endless)
    assert [m["role"] for m in saved] == ["Human", "Assistant", "Human", "Assistant"]
    assert saved[-1]["message"].startswith("I don't know.")
