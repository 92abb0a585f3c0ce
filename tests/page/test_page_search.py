"""The chat list's search box finds messages (chatapi/static/search.js over GET /search), in headless Chromium against
the real server: hits with their matched words marked, More, a search overtaken by newer typing, and a hit opening its
chat scrolled to the message, marked, also after a reload."""

import re
import uuid

import pytest
import requests
from playwright.sync_api import Page, Route, expect

from tests.support.chats import add_message
from tests.support.page import check_axe, save_screenshot

# Before the target: an astral character (two UTF-16 units, one code point), then non-ASCII words, so that marks put
# at UTF-16 offsets, or on the ASCII-folded text, would be off.
BRIDGE = "🌉 Die Brücke über den Fluß heißt {token}, sagt man."


def word() -> str:
    """A word no other test's messages hold: the page tests share one database."""
    return "zq" + uuid.uuid4().hex[:10]


def make_chat(base: str, name: str) -> str:
    response = requests.post(f"{base}/chats/create", json={"name": name}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def search(page: Page, text: str):
    page.fill("#search", text)
    return page.locator("#search-results")


def found(page: Page, message_id: str):
    return page.locator(f"#message-list .message[data-id='{message_id}']")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_message_found_is_marked_and_opens_its_chat_scrolled_to_it(open_tab, page_server, scheme, tmp_path):
    token = word()
    chat_id = make_chat(page_server, "Travel notes")
    messages = []
    for i in range(30):  # more than the screen holds: the one found is far above the last
        filler = f"Day {i + 1}: a walk by the river, lunch in the old town." if i % 2 == 0 else f"Noted for day {i}."
        text = BRIDGE.format(token=token) if i == 2 else filler
        messages.append(add_message(page_server, chat_id, text, ("Human", "Assistant")[i % 2]))
    target = messages[2]
    # The same token without the other word, in another chat: all the words must match.
    add_message(page_server, make_chat(page_server, "Elsewhere"), f"Only {token} here.")

    # Light without motion: the found message's ring stays (no fading), as the screenshot shows it.
    tab = open_tab(page_server, color_scheme=scheme, reduced_motion="reduce" if scheme == "light" else "no-preference")
    page = tab.page
    page.goto("/")
    expect(page.locator("#model-status")).to_have_attribute("data-status", "ok")
    results = search(page, f"BRÜCKE {token}")  # case-insensitive beyond ASCII
    hits = results.locator(".search-hit")
    expect(hits).to_have_count(1)
    expect(results.locator("#search-count")).to_have_text("1 message")
    hit = hits.first
    expect(hit.locator(".hit-chat")).to_have_text("Travel notes")
    expect(hit.locator(".hit-role")).to_have_text("You:")
    expect(hit.locator("mark")).to_have_text(["Brücke", token])
    expect(hit.locator(".hit-snippet")).to_have_text(f"You: {BRIDGE.format(token=token)}")
    expect(page.locator("#chats-title")).to_be_visible()
    expect(page.locator("#chat-list-empty")).to_have_text("No chat matches.")
    check_axe(page)

    hit.get_by_role("link").click()
    expect(page.locator("#chat-title")).to_have_text("Travel notes")
    expect(page).to_have_url(re.compile(f"#chat={chat_id}&message={target['id']}$"))
    expect(page.locator("#message-list .message")).to_have_count(30)
    message = found(page, target["id"])
    expect(message).to_have_class(re.compile(r"\bfound\b"))
    expect(message).to_be_in_viewport()
    expect(message).to_be_focused()
    expect(page.locator("#message-list .message").last).not_to_be_in_viewport()
    assert page.locator("#message-list .message.found").count() == 1
    check_axe(page)
    if scheme == "light":
        save_screenshot(page, tmp_path, "screenshot-search.png")  # docs/page.md shows it

    # The URL carries it: a reload opens the chat at the same message.
    page.reload()
    expect(page.locator("#message-list .message")).to_have_count(30)
    expect(found(page, target["id"])).to_have_class(re.compile(r"\bfound\b"))
    expect(found(page, target["id"])).to_be_in_viewport()
    expect(page.locator("#message-list .message").last).not_to_be_in_viewport()

    # Another chat from the list: the hash names the chat alone again.
    page.fill("#search", "")
    expect(page.locator("#search-results")).to_be_hidden()
    page.locator("#chat-list .chat-item", has_text="Elsewhere").first.locator(".chat-open").click()
    expect(page.locator("#chat-title")).to_have_text("Elsewhere")
    assert "&message=" not in page.url


def test_more_pages_on_past_the_chat_names_and_the_keyboard_opens_a_hit(tab, page_server):
    token = word()
    # The chat's name matches too: the chat list shows it, the Messages section only the messages.
    chat_id = make_chat(page_server, f"Notes {token}")
    ids = [add_message(page_server, chat_id, f"Entry {i} of {token}.")["id"] for i in range(25)]
    page = tab.page
    page.goto("/")
    results = search(page, token)
    expect(page.locator("#chat-list .chat-name")).to_have_text([f"Notes {token}"])
    hits = results.locator(".search-hit")
    # The first page: the chat's name, then 19 of the messages, newest first.
    expect(hits).to_have_count(19)
    expect(results.locator("#search-count")).to_have_text("25 messages, 19 shown")
    expect(hits.first.locator("mark")).to_have_text([token])
    expect(hits.first.locator(".hit-snippet")).to_have_text(f"You: Entry 24 of {token}.")

    more = results.get_by_role("button", name="More messages")
    more.focus()
    page.keyboard.press("Enter")
    expect(hits).to_have_count(25)
    expect(results.locator("#search-count")).to_have_text("25 messages")
    expect(more).to_be_hidden()
    # More went away under the focus: it is on the first new hit.
    twentieth = hits.nth(19).get_by_role("link")
    expect(twentieth).to_be_focused()
    expect(twentieth).to_contain_text(f"Entry 5 of {token}.")

    page.keyboard.press("ArrowDown")
    expect(hits.nth(20).get_by_role("link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#chat-title")).to_have_text(f"Notes {token}")
    message = found(page, ids[4])
    expect(message).to_have_class(re.compile(r"\bfound\b"))
    expect(message).to_be_focused()
    expect(message).to_be_in_viewport()

    # Another hit of the chat now open: no reload needed, the mark moves.
    page.locator("#search-results .search-hit", has_text=f"Entry 0 of {token}.").get_by_role("link").click()
    expect(found(page, ids[0])).to_have_class(re.compile(r"\bfound\b"))
    expect(found(page, ids[4])).not_to_have_class(re.compile(r"\bfound\b"))
    expect(page).to_have_url(re.compile(f"#chat={chat_id}&message={ids[0]}$"))


def test_messages_after_a_page_of_chat_names_are_found_too(tab, page_server):
    token = word()
    for i in range(21):  # more names than a page holds: the server lists them before any message
        make_chat(page_server, f"Shelf {i} {token}")
    add_message(page_server, make_chat(page_server, "Library"), f"The {token} is on the top shelf.")
    page = tab.page
    page.goto("/")
    results = search(page, token)
    expect(page.locator("#chat-list .chat-item")).to_have_count(21)
    hits = results.locator(".search-hit")
    expect(hits).to_have_count(1)
    expect(hits.first.locator(".hit-chat")).to_have_text("Library")
    expect(results.locator("#search-count")).to_have_text("1 message")
    expect(results.get_by_role("button", name="More messages")).to_be_hidden()


def test_a_search_overtaken_by_newer_typing_is_given_up_and_its_answer_never_shown(tab, page_server):
    token = word()
    chat_id = make_chat(page_server, "Birds")
    add_message(page_server, chat_id, f"The first {token} is a heron.")
    add_message(page_server, chat_id, f"The second {token} is a crane.")
    page = tab.page
    held: list[Route] = []  # the first search's request, kept from the server

    def hold_heron(route: Route) -> None:
        if "heron" in route.request.url:
            held.append(route)
        else:
            route.continue_()

    page.route("**/search?*", hold_heron)
    page.goto("/")
    expect(page.locator("#model-status")).to_have_attribute("data-status", "ok")
    results = search(page, f"{token} heron")
    expect(results.locator("#search-count")).to_have_text("Searching…")
    while not held:  # round trips to the browser until the route's handler has run
        page.evaluate("() => true")

    # Newer typing: the page gives up on the older request, whose answer could otherwise come last.
    with page.expect_event("requestfailed", predicate=lambda request: "heron" in request.url) as failed:
        search(page, f"{token} crane")
    assert "ABORTED" in (failed.value.failure or "")
    hits = results.locator(".search-hit")
    expect(hits).to_have_count(1)
    expect(hits.first.locator("mark")).to_have_text([token, "crane"])
    expect(results.locator("#search-count")).to_have_text("1 message")
    try:
        held[0].continue_()
    except Exception:  # noqa: BLE001 - Playwright refuses to go on with a request the page aborted
        pass
    expect(hits.first.locator("mark")).to_have_text([token, "crane"])
