"""The browser page at / in headless Chromium (Debian's, driven by Playwright) against the real server and model."""

import json
import re
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest
import requests
from playwright.sync_api import Page, expect

from chatapi.extensions import db
from chatapi.models import Chat, Conversation
from tests.support.chats import ENDLESS, LONG_QUESTION, add_message, history, new_chat
from tests.support.page import (
    PAGE_KEY,
    keyed_chat,
    keyed_history,
    last_reply,
    save_screenshot,
    sign_in,
    wait_for_reply_text,
)
from tests.support.server import ROOT
from tests.support.web import web_settings

QUESTION = "What is the capital of France?"
# The looping history without its last question, which the tests type into the page.
ENDLESS_START = ENDLESS[:-1]
VOLCANO_QUESTION = "How often does the Zorblax volcano erupt?"
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold</b> & more'
GREEDY = "temperature=0"
# Sources as a hostile page or a tampered database could give them: script URLs (also disguised, which the
# URL parser undoes) and markup in titles. Only the last is a web address, so only it may become a link.
HOSTILE_SOURCES = [
    {"n": 1, "title": '<img src=x onerror="window.__pwned = 1">Evil page', "url": "javascript:window.__pwned = 2",
     "snippet": "<b>snippet</b>"},
    {"n": 2, "title": "<script>window.__pwned = 3</script>Shouting", "url": " JavaScript:window.__pwned = 4",
     "snippet": ""},
    {"n": 3, "title": "Split scheme", "url": "java\tscript:window.__pwned = 5", "snippet": ""},
    {"n": 4, "title": "Data page", "url": "data:text/html,<script>window.__pwned = 6</script>", "snippet": ""},
    {"n": 5, "title": "", "url": "vbscript:msgbox(1)", "snippet": ""},
    {"n": 6, "title": "A real page <b>bold</b>", "url": "https://example.org/volcano?q=<b>", "snippet": ""},
]
# What the page and its files must be served with, written out here so that a loosened policy fails.
EXPECTED_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

# Every text the last Assistant bubble shows, in order, while a reply streams in; and the last one it showed
# while streaming, made of the streamed pieces only (`done` then shows the saved text). The page draws a
# streaming reply once per animation frame, so that one may lack the pieces that came in the last frame.
RECORD_REPLY_TEXTS = """
() => {
  window.__replyTexts = [];
  window.__streamedText = null;
  const record = () => {
    const replies = document.querySelectorAll("#message-list .message.assistant");
    const reply = replies[replies.length - 1];
    const text = reply ? reply.querySelector(".bubble").textContent : "";
    const seen = window.__replyTexts;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
    if (reply && reply.dataset.state === "streaming") window.__streamedText = text;
  };
  new MutationObserver(record).observe(document.getElementById("message-list"),
    { childList: true, subtree: true, characterData: true });
}
"""


def send_long_question(page: Page, base: str, max_tokens: int) -> str:
    """Open a chat whose reply runs to max_tokens (ENDLESS_START) and send its question; the chat's id."""
    chat_id = new_chat(base, *ENDLESS_START)
    page.goto(f"/?max_tokens={max_tokens}&{GREEDY}#chat={chat_id}")
    expect(page.locator("#message-list .message")).to_have_count(2)
    page.fill("#message-input", LONG_QUESTION)
    page.click("#send")
    # The question and its reply are on the page (and the reply's stream open): until then the last reply is
    # the saved one, whose text would satisfy wait_for_reply_text at once.
    expect(page.locator("#message-list .message")).to_have_count(4)
    return chat_id


def check_sources_are_inert(page: Page, reply) -> None:
    """HOSTILE_SOURCES shown in the reply: every title as text, and only the web address as a link."""
    expect(reply.locator(".sources .source-n")).to_have_text([str(s["n"]) for s in HOSTILE_SOURCES])
    labels = reply.locator(".sources .source-link")
    assert labels.all_text_contents() == [s["title"] or s["url"] for s in HOSTILE_SOURCES]
    links = reply.locator(".sources a")
    expect(links).to_have_count(1)
    assert links.get_attribute("href") == "https://example.org/volcano?q=%3Cb%3E"
    expect(links).to_have_text(HOSTILE_SOURCES[-1]["title"])
    assert reply.locator(".sources img, .sources script, .sources b").count() == 0
    # No attribute anywhere in the messages runs script or names a script URL.
    risky = page.evaluate("""() => [...document.querySelectorAll("#message-list *")].flatMap((element) =>
        [...element.attributes]
          .filter((a) => /^on/i.test(a.name) || /^(java|vb)script:|^data:/i.test(a.value.replace(/[\\s\\0]/g, "")))
          .map((a) => `${element.tagName} ${a.name}=${a.value}`))""")
    assert risky == []
    for inert in reply.locator(".sources span.source-link").all():
        inert.click()
    assert page.evaluate("window.__pwned") is None
    assert urlparse(page.url).path == "/"


def with_sources(body: str, sources: list[dict]) -> tuple[str, int]:
    """An event stream's text with the sources of its `sources` event and of its `done` message replaced."""
    blocks = body.split("\n\n")
    replaced = 0
    for i, block in enumerate(blocks):
        lines = block.split("\n")
        kind = next((line.removeprefix("event: ") for line in lines if line.startswith("event: ")), None)
        if kind not in ("sources", "done"):
            continue
        data_at = next(j for j, line in enumerate(lines) if line.startswith("data: "))
        data = json.loads(lines[data_at].removeprefix("data: "))
        (data if kind == "sources" else data["message"])["sources"] = sources
        lines[data_at] = "data: " + json.dumps(data)
        blocks[i] = "\n".join(lines)
        replaced += 1
    return "\n\n".join(blocks), replaced


class Cable:
    """A TCP proxy between the browser and the server that a test can pull out: every open connection is cut
    (the server sees its stream drop and goes on generating), and new ones wait until it is plugged back in."""

    def __init__(self, server_url: str):
        self.server = ("127.0.0.1", urlparse(server_url).port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.plugged = threading.Event()
        self.plugged.set()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.connect, args=(client,), daemon=True).start()

    def connect(self, client: socket.socket) -> None:
        self.plugged.wait()
        try:
            server = socket.create_connection(self.server)
        except OSError:
            client.close()
            return
        pair = [client, server]
        with self.lock:
            self.sockets.update(pair)
        pumps = [threading.Thread(target=self.pump, args=ends, daemon=True) for ends in (pair, pair[::-1])]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        self.cut(pair)

    @staticmethod
    def pump(source: socket.socket, target: socket.socket) -> None:
        """Copy one direction; its end (FIN) is passed on, so that no byte in flight is lost."""
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:  # a side is gone, or the cable was pulled: end the other direction too
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self, sockets) -> None:
        with self.lock:
            self.sockets.difference_update(sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def unplug(self) -> None:
        self.plugged.clear()
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # both ways at once, mid-response: the pumps end and close them
            except OSError:
                pass

    def plug(self) -> None:
        self.plugged.set()

    def close(self) -> None:
        self.unplug()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.listener.close()
        self.plug()  # lets the waiting connections fail


def chat_names(page: Page) -> list[str]:
    return page.locator("#chat-list .chat-name").all_text_contents()


def test_send_streams_the_reply_token_by_token_and_it_is_there_after_a_reload(tab, page_server):
    page = tab.page
    page.goto(f"/?max_tokens=24&{GREEDY}")
    expect(page.locator("#model-status")).to_have_attribute("data-status", "ok")
    expect(page.locator("#model-label")).to_have_text("gemma-3-270m")
    page.click("#new-chat")
    active = page.locator("#chat-list .chat-item.active")
    expect(active.locator(".chat-name")).to_have_text("New chat")
    chat_id = active.get_attribute("data-id")
    assert page.url.endswith(f"#chat={chat_id}")
    assert requests.get(f"{page_server}/chats/{chat_id}", timeout=10).json()["name"] == "New chat"

    page.evaluate(RECORD_REPLY_TEXTS)
    page.fill("#message-input", QUESTION)
    page.press("#message-input", "Enter")
    expect(page.locator("#message-list .message.human .bubble")).to_have_text([QUESTION])
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "done")
    expect(page.locator("#message-input")).to_have_value("")

    saved = history(page_server, chat_id)
    assert [m["role"] for m in saved] == ["Human", "Assistant"]
    answer = saved[1]["message"]
    assert "Paris" in answer
    assert reply.locator(".bubble").text_content() == answer
    assert reply.get_attribute("data-id") == saved[1]["id"]
    assert re.search(r"\d+ tokens", reply.locator(".meta").text_content())

    # Tokens came in one by one: the bubble grew through several texts, each the start of the next.
    texts = [t.strip() for t in page.evaluate("window.__replyTexts")]
    assert len(texts) >= 3, texts
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False)), texts
    assert texts[-1] == answer

    # One stream, on the inference route with the page's options, closed by the page on `done`.
    streams = tab.event_sources()
    assert len(streams) == 1
    assert streams[0]["url"] == f"{page_server}/conversations/inference/{chat_id}?max_tokens=24&temperature=0"
    assert streams[0]["state"] == 2  # EventSource.CLOSED
    # A new chat is named after its first message.
    expect(active.locator(".chat-name")).to_have_text(QUESTION)
    assert requests.get(f"{page_server}/chats/{chat_id}", timeout=10).json()["name"] == QUESTION

    page.reload()
    expect(page.locator("#chat-title")).to_have_text(QUESTION)
    expect(page.locator("#message-list .bubble")).to_have_text([QUESTION, answer])
    expect(last_reply(page)).to_have_attribute("data-state", "saved")
    assert tab.event_sources() == []  # the reply is saved: nothing to stream
    assert len(history(page_server, chat_id)) == 2


def test_stop_ends_a_long_reply_and_keeps_what_was_written(tab, page_server):
    page = tab.page
    chat_id = send_long_question(page, page_server, 400)
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "streaming")
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator("#send")).to_be_hidden()
    wait_for_reply_text(page, 20)
    page.click("#stop")

    expect(reply).to_have_attribute("data-state", "stopped")
    expect(reply.locator(".note")).to_have_text("Stopped.")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    tokens = int(re.search(r"(\d+) tokens", reply.locator(".meta").text_content()).group(1))
    assert tokens < 200  # stopped, not run to its 400
    saved = history(page_server, chat_id)
    assert [m["role"] for m in saved] == ["Human", "Assistant", "Human", "Assistant"]
    assert reply.locator(".bubble").text_content() == saved[-1]["message"]
    assert saved[-1]["message"].startswith("I don't know.")
    assert [s["state"] for s in tab.event_sources()] == [2]


def test_a_reload_in_the_middle_of_a_reply_picks_the_reply_up_again(tab, page_server):
    page = tab.page
    chat_id = send_long_question(page, page_server, 300)
    wait_for_reply_text(page, 10)
    page.reload()  # mid-reply: the generation goes on on the server

    reply = last_reply(page)
    expect(page.locator("#message-list .message")).to_have_count(4)
    expect(reply).to_have_attribute("data-state", "done", timeout=60_000)
    expect(reply.locator(".note")).to_have_text("Reached the max tokens limit.")
    saved = history(page_server, chat_id)
    assert len(saved) == 4, "the reload started a second reply"
    assert reply.get_attribute("data-id") == saved[-1]["id"]
    assert reply.locator(".bubble").text_content() == saved[-1]["message"]
    # After the reload the page joined the running reply (replayed from its start) on the same route.
    streams = tab.event_sources()
    url = f"{page_server}/conversations/inference/{chat_id}?max_tokens=300&temperature=0&after={saved[-2]['id']}"
    assert [s["url"] for s in streams] == [url]
    assert streams[0]["state"] == 2


def test_a_reload_just_after_the_reply_ended_shows_it_and_starts_no_other(tab, page_server):
    """The page read the messages before the reply was saved, then asked to join it after it ended."""
    page = tab.page
    chat_id = new_chat(page_server, "What is the capital of France?")
    question = history(page_server, chat_id)[-1]
    page.goto(f"/?max_tokens=24&{GREEDY}#chat={chat_id}")
    expect(page.locator("#message-list .no-reply")).to_have_count(1)
    # The reply ends meanwhile (another tab asked for it), while this page still holds its pending mark.
    requests.get(f"{page_server}/conversations/inference/{chat_id}?max_tokens=24&temperature=0", timeout=60).close()
    assert len(history(page_server, chat_id)) == 2
    page.evaluate("([id]) => localStorage.setItem('chatapi.pending', JSON.stringify({[id]: 'local'}))", [chat_id])
    page.route(f"**/chats/{chat_id}/conversations", lambda route: route.fulfill(json=[question]), times=1)
    page.reload()  # sees only the question (as if read a moment earlier), so it asks to join the reply

    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "done", timeout=30_000)
    saved = history(page_server, chat_id)
    assert len(saved) == 2, "a second reply was started"
    assert reply.locator(".bubble").text_content() == saved[-1]["message"]


def test_chats_are_listed_newest_first_renamed_and_deleted(tab, page_server):
    page = tab.page
    ids = {}
    for name in ("Groceries", "Trip plans", "Recipes"):
        ids[name] = requests.post(f"{page_server}/chats/create", json={"name": name}, timeout=10).json()["id"]
    page.goto("/")
    expect(page.locator("#chat-list .chat-name")).to_have_text(["Recipes", "Trip plans", "Groceries"])
    expect(page.locator("#empty-state")).to_be_visible()

    groceries = page.locator("#chat-list .chat-item", has_text="Groceries")
    groceries.hover()
    groceries.locator(".chat-rename").click()
    page.fill("#chat-list .rename-input", "Shopping list")
    page.press("#chat-list .rename-input", "Enter")
    # Renaming moves the chat's updated_at, so it comes first.
    expect(page.locator("#chat-list .chat-name")).to_have_text(["Shopping list", "Recipes", "Trip plans"])
    assert requests.get(f"{page_server}/chats/{ids['Groceries']}", timeout=10).json()["name"] == "Shopping list"

    trip = page.locator("#chat-list .chat-item", has_text="Trip plans")
    trip.hover()
    trip.locator(".chat-delete").click()
    expect(page.locator("#confirm-delete")).to_be_visible()
    expect(page.locator("#confirm-name")).to_have_text("Trip plans")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#confirm-delete")).to_be_hidden()
    assert requests.get(f"{page_server}/chats/{ids['Trip plans']}", timeout=10).status_code == 200

    trip.hover()
    trip.locator(".chat-delete").click()
    page.click("#confirm-delete-button")
    expect(page.locator("#chat-list .chat-name")).to_have_text(["Shopping list", "Recipes"])
    assert requests.get(f"{page_server}/chats/{ids['Trip plans']}", timeout=10).status_code == 404

    # The selected chat, from the header: renamed in place, then deleted, and the page shows no chat.
    page.locator("#chat-list .chat-item", has_text="Recipes").locator(".chat-open").click()
    expect(page.locator("#chat-title")).to_have_text("Recipes")
    assert page.url.endswith(f"#chat={ids['Recipes']}")
    page.click("#rename-chat")
    page.fill(".topbar .rename-input", "Family recipes")
    page.press(".topbar .rename-input", "Enter")
    expect(page.locator("#chat-title")).to_have_text("Family recipes")
    assert requests.get(f"{page_server}/chats/{ids['Recipes']}", timeout=10).json()["name"] == "Family recipes"
    page.click("#delete-chat")
    page.click("#confirm-delete-button")
    expect(page.locator("#chat-list .chat-name")).to_have_text(["Shopping list"])
    expect(page.locator("#chat-title")).to_have_text("New conversation")
    expect(page.locator("#empty-state")).to_be_visible()
    assert "#chat=" not in page.url
    assert requests.get(f"{page_server}/chats/{ids['Recipes']}", timeout=10).status_code == 404

    page.fill("#search", "shop")
    expect(page.locator("#chat-list .chat-name")).to_have_text(["Shopping list"])
    page.fill("#search", "nothing like this")
    expect(page.locator("#chat-list-empty")).to_have_text("No chat matches.")


def test_html_in_names_and_messages_is_shown_as_text(tab, page_server):
    page = tab.page
    chat_id = requests.post(f"{page_server}/chats/create", json={"name": HOSTILE}, timeout=10).json()["id"]
    add_message(page_server, chat_id, "Say something in HTML.")
    add_message(page_server, chat_id, HOSTILE, role="Assistant")
    page.goto(f"/?max_tokens=24&{GREEDY}#chat={chat_id}")
    page.fill("#message-input", HOSTILE)
    page.click("#send")
    expect(last_reply(page)).to_have_attribute("data-state", "done")

    bubbles = page.locator("#message-list .bubble").all_text_contents()
    assert bubbles[:3] == ["Say something in HTML.", HOSTILE, HOSTILE]
    expect(page.locator("#chat-title")).to_have_text(HOSTILE)
    expect(page.locator("#chat-list .chat-name")).to_have_text([HOSTILE])
    markup = page.locator("#message-list b, #message-list script, img[src='x'], #chat-list b, #chat-title b")
    assert markup.count() == 0
    assert page.evaluate("window.__pwned") is None
    assert page.title() == f"{HOSTILE} · chatapi"


def test_the_page_never_turns_strings_into_html():
    modules = sorted((ROOT / "chatapi/static").glob("*.js"))  # the page's own modules (not vendor/)
    assert {"main.js", "api.js", "stream.js", "state.js", "views.js"} <= {module.name for module in modules}
    for module in modules:
        script = module.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in script, f"{module.name}: {sink}"


def test_a_bad_option_is_reported_in_the_reply_and_the_stream_is_closed(tab, page_server):
    page = tab.page
    chat_id = new_chat(page_server, QUESTION)
    page.goto(f"/?max_tokens=99999#chat={chat_id}")
    # The last message is a Human one and this page never started its reply: it offers to.
    pending = page.locator("#message-list .no-reply")
    expect(pending.locator(".note")).to_have_text("No reply yet.")
    assert tab.event_sources() == []
    pending.get_by_role("button", name="Get a reply").click()

    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "error")
    expect(reply.locator(".note.error")).to_contain_text("max_tokens: Must be at most 2048")
    expect(reply.get_by_role("button", name="Try again")).to_be_visible()
    assert [s["state"] for s in tab.event_sources()] == [2]
    assert len(history(page_server, chat_id)) == 1


def test_a_failed_request_is_reported_in_the_page(tab, page_server):
    page = tab.page
    chat_id = new_chat(page_server, QUESTION)
    page.goto(f"/?max_tokens=24&{GREEDY}#chat={chat_id}")
    expect(page.locator("#chat-title")).to_have_text("test")
    requests.delete(f"{page_server}/chats/delete/{chat_id}", timeout=10)  # by another client
    page.fill("#message-input", "Are you there?")
    page.click("#send")
    expect(page.locator("#alerts .alert-text")).to_have_text(f"Could not send the message: chat {chat_id} not found.")
    expect(page.locator("#message-input")).to_have_value("Are you there?")  # nothing typed is lost

    page.goto(f"/#chat={chat_id}")  # a link to a chat that is gone
    expect(page.locator("#alerts .alert-text")).to_have_text("That chat does not exist any more.")
    expect(page.locator("#empty-state")).to_be_visible()


def test_an_error_event_ends_the_reply_in_the_page_and_closes_the_stream(tab, page_server):
    page = tab.page
    chat_id = send_long_question(page, page_server, 120)
    wait_for_reply_text(page, 10)
    # Another client deletes the chat mid-reply: at its end the reply cannot be saved, and the stream
    # ends with `event: error`.
    assert requests.delete(f"{page_server}/chats/delete/{chat_id}", timeout=10).status_code == 200

    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "error", timeout=60_000)
    expect(reply.locator(".note.error")).to_have_text(f"Error: chat {chat_id} was deleted.")
    expect(page.locator("#stop")).to_be_hidden()
    assert [s["state"] for s in tab.event_sources()] == [2]


def test_internet_mode_shows_numbered_sources_as_links(tab, page_server, web):
    page = tab.page
    page.goto(f"/?max_tokens=24&{GREEDY}")
    page.click("label.toggle")
    expect(page.locator("#internet")).to_be_checked()
    page.fill("#message-input", VOLCANO_QUESTION)
    page.click("#send")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "done")

    chat_id = page.locator("#chat-list .chat-item.active").get_attribute("data-id")
    saved = history(page_server, chat_id)[-1]
    assert saved["sources"], "the answer has no sources"
    links = reply.locator(".sources a.source-link")
    expect(links).to_have_count(len(saved["sources"]))
    expect(reply.locator(".sources .source-n")).to_have_text([str(s["n"]) for s in saved["sources"]])
    assert links.first.get_attribute("href") == f"{web.url}/articles/volcano"
    expect(links.first).to_have_text("Zorblax volcano facts")
    assert links.first.get_attribute("target") == "_blank"
    assert "noopener" in links.first.get_attribute("rel")
    check_citation_links(reply, saved)
    streams = tab.event_sources()
    assert [s["url"].split("?")[0] for s in streams] == [f"{page_server}/conversations/inference_internet/{chat_id}"]
    assert streams[0]["state"] == 2

    page.reload()  # saved with the answer: the same sources and citations, and the toggle is remembered
    expect(page.locator("#internet")).to_be_checked()
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "saved")
    links = reply.locator(".sources a.source-link")
    expect(links).to_have_count(len(saved["sources"]))
    expect(links.first).to_have_text("Zorblax volcano facts")
    check_citation_links(reply, saved)


def with_citation_marks(text: str, citations: list[dict]) -> str:
    """The text as the page shows it: [n] after each cited sentence, or in place of an [n] the model wrote."""
    marks = {}
    for citation in citations:
        marker = f"[{citation['n']}]"
        written = text.rfind(marker, citation["start"], citation["end"])
        marks[(written, len(marker)) if written >= 0 else (citation["end"], 0)] = marker
    shown, at = [], 0
    for (mark, length), marker in sorted(marks.items()):
        shown += [text[at:mark], marker]
        at = mark + length
    return "".join(shown) + text[at:]


def check_citation_links(reply, saved: dict) -> None:
    """The answer's text with a superscript [n] link to its source after each cited sentence."""
    assert saved["citations"], "the answer cites nothing"
    bubble = reply.locator(".bubble")
    # As shown (innerText): the reply is Markdown, whose paragraphs are blocks with no text between them.
    expect(bubble).to_have_text(with_citation_marks(saved["message"], saved["citations"]), use_inner_text=True)
    links = bubble.locator("sup.citation a")
    expect(links).to_have_count(len(saved["citations"]))
    sources = {s["n"]: s for s in saved["sources"]}
    for link, citation in zip(links.all(), saved["citations"], strict=True):
        source = sources[citation["n"]]
        expect(link).to_have_text(f"[{source['n']}]")
        expect(link).to_have_accessible_name(f"Source {source['n']}: {source['title']}")
        assert link.get_attribute("href") == source["url"] and link.get_attribute("target") == "_blank"
        assert "noopener" in link.get_attribute("rel")
    first = saved["sources"][0]
    expect(reply.get_by_role("link", name=f"Source 1: {first['title']}").first).to_be_visible()


def test_internet_mode_shows_the_warning_when_search_fails(open_tab, start_server, web):
    server = start_server(CHATAPI_PING_SECONDS="0.5", **web_settings(web, "/ratelimited"))
    tab = open_tab(server.url)
    page = tab.page
    page.goto(f"/?max_tokens=24&{GREEDY}&internet=1")
    expect(page.locator("#internet")).to_be_checked()
    page.fill("#message-input", VOLCANO_QUESTION)
    page.click("#send")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "done")
    expect(reply.locator(".note.warning")).to_contain_text("search failed")
    expect(reply.locator(".sources")).to_have_count(0)
    assert reply.locator(".bubble").text_content()


def test_saved_sources_with_script_urls_and_html_titles_are_inert_text(tab, page_server, app):
    """An answer's saved sources, as the page shows them when it loads the chat."""
    chat_id = new_chat(page_server, VOLCANO_QUESTION)
    with app.app_context():  # straight into the database: no route takes sources
        chat = db.session.get(Chat, uuid.UUID(chat_id))
        citations = [{"start": 0, "end": 31, "n": 1}, {"start": 0, "end": 31, "n": 6}]
        answer = "It erupts every 47 minutes [1]."
        db.session.add(Conversation(chat, "Assistant", answer, sources=HOSTILE_SOURCES, citations=citations))
        db.session.commit()
    assert history(page_server, chat_id)[-1]["sources"] == HOSTILE_SOURCES
    page = tab.page
    page.goto(f"/#chat={chat_id}")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "saved")
    # The [1] the model wrote becomes the link; none is added after the sentence.
    expect(reply.locator(".bubble")).to_have_text("It erupts every 47 minutes [1].[6]")
    # The citation of the script URL is text; only the web address's is a link.
    expect(reply.locator(".bubble .citation span.citation-link")).to_have_text(["[1]"])
    expect(reply.locator(".bubble a")).to_have_count(1)
    assert reply.locator(".bubble a").get_attribute("href") == "https://example.org/volcano?q=%3Cb%3E"
    check_sources_are_inert(page, reply)


def test_streamed_sources_with_script_urls_and_html_titles_are_inert_text(tab, page_server):
    """The server's own internet-mode stream, with the sources in its `sources` and `done` events replaced on
    the way to the page (the server never fetches such addresses, but a search result can name them)."""
    page = tab.page
    replaced = []

    def tamper(route):
        response = route.fetch(timeout=120_000)
        body, count = with_sources(response.text(), HOSTILE_SOURCES)
        replaced.append(count)
        route.fulfill(status=response.status, content_type=response.headers["content-type"], body=body)

    page.route("**/conversations/inference_internet/**", tamper)
    page.goto(f"/?max_tokens=24&{GREEDY}&internet=1")
    page.fill("#message-input", VOLCANO_QUESTION)
    page.click("#send")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "done", timeout=120_000)
    assert replaced == [2], "the stream had no sources event (the local web was not read?)"
    check_sources_are_inert(page, reply)


def test_the_page_and_its_files_carry_the_policy_and_nosniff_and_inline_code_is_blocked(tab):
    page = tab.page
    responses = {}
    page.on("response", lambda response: responses.setdefault(urlparse(response.url).path, response))
    page.goto("/")
    expect(page.locator("#model-status")).to_have_attribute("data-status", "ok")
    types = {
        "/": "text/html",
        "/static/main.js": "text/javascript",
        "/static/api.js": "text/javascript",
        "/static/stream.js": "text/javascript",
        "/static/state.js": "text/javascript",
        "/static/views.js": "text/javascript",
        "/static/markdown.js": "text/javascript",
        "/static/search.js": "text/javascript",
        "/static/hits.js": "text/javascript",
        "/static/vendor/markdown-it/markdown-it.js": "text/javascript",
        "/static/vendor/dompurify/purify.js": "text/javascript",
        "/static/vendor/highlight.js/highlight.js": "text/javascript",
        "/static/app.css": "text/css",
        "/static/vendor/highlight.js/github.css": "text/css",
        "/static/vendor/highlight.js/github-dark.css": "text/css",
        "/static/favicon.svg": "image/svg+xml",
    }
    for path, content_type in types.items():
        headers = responses[path].all_headers()
        assert responses[path].status == 200, path
        assert headers["content-type"].split(";")[0] == content_type, path
        assert headers["content-security-policy"] == EXPECTED_CSP, path
        assert headers["x-content-type-options"] == "nosniff", path

    # The policy at work: a script, an event handler and a stylesheet written into the page do nothing,
    # and the browser reports each one it refused.
    page.evaluate("""() => {
      window.__violations = [];
      document.addEventListener("securitypolicyviolation",
        (event) => window.__violations.push(`${event.effectiveDirective} ${event.blockedURI}`));
      const script = document.createElement("script");
      script.textContent = "window.__pwned = 'script'";
      document.body.append(script);
      const image = document.createElement("img");
      image.setAttribute("onerror", "window.__pwned = 'handler'");
      image.src = "/static/no-such-image.png";
      document.body.append(image);
      const style = document.createElement("style");
      style.textContent = "#chat-title { visibility: hidden }";
      document.head.append(style);
    }""")
    page.wait_for_function("() => window.__violations.length >= 3 || window.__pwned")
    assert page.evaluate("window.__pwned") is None
    assert sorted(page.evaluate("window.__violations")) == [
        "script-src-attr inline",
        "script-src-elem inline",
        "style-src-elem inline",
    ]
    expect(page.locator("#chat-title")).to_be_visible()


def test_a_stream_cut_mid_reply_shows_the_reconnect_and_resumes_after_the_last_event(open_tab, page_server):
    """The connection drops under the page (no reload): the EventSource reconnects with Last-Event-ID, the
    server sends what the page missed and the rest, and the page ends with exactly the saved reply."""
    cable = Cable(page_server)
    try:
        tab = open_tab(cable.url)
        page = tab.page
        streams = []
        page.on("request", lambda request: "/conversations/inference/" in request.url and streams.append(request))
        chat_id = send_long_question(page, page_server, 300)
        reply = last_reply(page)
        wait_for_reply_text(page, 1)
        page.evaluate(RECORD_REPLY_TEXTS)
        page.evaluate("""() => {
          window.__ids = [];
          window.__eventSources[0].addEventListener("message", (event) => window.__ids.push(event.lastEventId));
        }""")
        wait_for_reply_text(page, 40)

        with page.expect_request(lambda request: "/conversations/inference/" in request.url) as again:
            cable.unplug()  # new connections wait until the cable is back
            expect(reply.get_by_role("status")).to_have_text("Reconnecting…")
        cut_at = len(reply.locator(".bubble").text_content())
        ids = page.evaluate("window.__ids")  # what the page got before the cut
        cable.plug()
        # (The request's headers are known once it has reached the server.)
        assert again.value.header_value("last-event-id") == ids[-1]

        expect(reply).to_have_attribute("data-state", "done", timeout=120_000)
        expect(reply.get_by_role("status")).to_have_count(0)
        # Not cancelled: the server went on while nobody listened, and the page got the rest.
        expect(reply.locator(".note")).to_have_text("Reached the max tokens limit.")
        saved = history(page_server, chat_id)[-1]
        assert saved["role"] == "Assistant" and len(saved["message"]) > cut_at
        assert reply.locator(".bubble").text_content() == saved["message"]
        assert again.value.response().status == 200  # resumed, not "already delivered" (204)
        # The pieces streamed before `done` make the saved reply: none came twice (a replay from the start) or
        # was skipped. The text shown only ever grew, and what was shown while streaming was a start of them
        # (drawn once a frame, it may lack the last few; a replay would have made it longer than the reply). When
        # the server finished while the cable was out, the rest arrives with `done` and may be drawn in the same
        # frame, so what was shown while streaming can end where the cut was.
        assert page.evaluate("window.__eventSources[0].__text").strip() == saved["message"]
        texts = [text.strip() for text in page.evaluate("window.__replyTexts")]
        assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False)), texts
        assert texts[-1] == saved["message"]
        streamed = page.evaluate("window.__streamedText").strip()
        assert len(streamed) >= cut_at and saved["message"].startswith(streamed)
        # The page's one EventSource did it (the browser's own reconnect), and the page closed it at the end.
        assert [request.url for request in streams] == [streams[0].url] * 2
        assert [s["state"] for s in tab.event_sources()] == [2]
    finally:
        cable.close()


def test_a_server_with_keys_asks_for_one_refuses_a_wrong_one_and_the_person_carries_on(open_tab, keyed_server):
    base = keyed_server
    keyed_chat(base, "made with the key")
    tab = open_tab(base)
    page = tab.page
    page.goto(f"/?max_tokens=24&{GREEDY}")
    prompt = sign_in(page, "not-the-key")
    expect(prompt.get_by_role("alert")).to_have_text("That key is not valid.")
    expect(prompt.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    expect(prompt).to_be_visible()
    assert tab.context.cookies() == []

    sign_in(page)
    expect(prompt).to_be_hidden()
    expect(page.locator("#model-label")).to_have_text("gemma-3-270m")  # /health names it to the signed in only
    (cookie,) = tab.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and PAGE_KEY not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # no script can read it
    # The request that met the 401 went on: the chat list is there, with no error shown.
    expect(page.locator("#chat-list .chat-name")).to_have_text(["keyed"])
    expect(page.locator("#alerts .alert")).to_have_count(0)

    page.fill("#message-input", QUESTION)
    page.click("#send")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "done")
    chat_id = page.locator("#chat-list .chat-item.active").get_attribute("data-id")
    saved = keyed_history(base, chat_id)
    assert [m["role"] for m in saved] == ["Human", "Assistant"]
    assert reply.locator(".bubble").text_content() == saved[1]["message"]
    assert [s["state"] for s in tab.event_sources()] == [2]


def test_a_session_gone_mid_visit_asks_again_and_the_request_or_the_stream_goes_on(open_tab, keyed_server):
    base = keyed_server
    chat_id = keyed_chat(base, QUESTION)
    tab = open_tab(base)
    page = tab.page
    page.goto(f"/?max_tokens=24&{GREEDY}#chat={chat_id}")
    sign_in(page)
    pending = page.locator("#message-list .no-reply")
    expect(pending.locator(".note")).to_have_text("No reply yet.")

    # The session ends (it expired, or the keys changed): the stream meets a 401, which EventSource cannot
    # tell; the page finds out, asks for the key, and opens the stream again.
    tab.context.clear_cookies()
    pending.get_by_role("button", name="Get a reply").click()
    prompt = sign_in(page)
    expect(prompt).to_be_hidden()
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "done")
    saved = keyed_history(base, chat_id)
    assert [m["role"] for m in saved] == ["Human", "Assistant"]
    assert reply.locator(".bubble").text_content() == saved[1]["message"]
    assert [s["state"] for s in tab.event_sources()] == [2, 2]  # refused, then the reply

    # Again while sending: the message is stored once, after the sign-in, and answered.
    tab.context.clear_cookies()
    page.fill("#message-input", "And of Italy?")
    page.click("#send")
    sign_in(page)
    expect(page.locator("#message-list .message")).to_have_count(4)
    expect(last_reply(page)).to_have_attribute("data-state", "done")
    saved = keyed_history(base, chat_id)
    assert [(m["role"], m["message"]) for m in saved][2][1] == "And of Italy?"
    assert [m["role"] for m in saved] == ["Human", "Assistant", "Human", "Assistant"]
    expect(page.locator("#alerts .alert")).to_have_count(0)

    # Closing the prompt instead leaves the request refused, says so, and asks no more until told to.
    tab.context.clear_cookies()
    page.get_by_role("button", name="New chat").click()
    prompt = page.get_by_role("dialog", name="Sign in")
    expect(prompt).to_be_visible()
    page.keyboard.press("Escape")
    expect(prompt).to_be_hidden()
    expect(page.locator("#alerts .alert-text").first).to_have_text("Could not create a chat: an API key is needed.")
    assert len(requests.get(f"{base}/chats/", headers={"Authorization": f"Bearer {PAGE_KEY}"}, timeout=10).json()) == 1
    # The chat list's own refresh may fail beside it with an alert of its own: look for this click's alert.
    page.evaluate("document.querySelector('#alerts').replaceChildren()")
    page.get_by_role("button", name="New chat").click()
    refused = page.locator("#alerts .alert-text").filter(has_text="Could not create a chat: an API key is needed.")
    expect(refused).to_have_count(1)
    expect(prompt).to_be_hidden()
    page.get_by_role("button", name="Sign in").click()
    sign_in(page)
    expect(prompt).to_be_hidden()
    expect(page.get_by_role("button", name="Sign in")).to_be_hidden()
    expect(page.locator("#chat-list .chat-name")).to_have_text(["keyed"])
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#chat-list .chat-name")).to_have_text(["New chat", "keyed"])


def test_the_api_docs_are_linked_and_load_offline_under_the_pages_policy(tab, page_server):
    page = tab.page
    page.goto("/")
    link = page.locator("#docs-link")
    expect(link).to_have_text("API docs")
    assert link.get_attribute("href") == "/docs"
    refused = []  # what the Content-Security-Policy blocked, as the browser tells the page and its console
    page.on("console", lambda message: "Content Security Policy" in message.text and refused.append(message.text))
    tab.context.add_init_script("""document.addEventListener("securitypolicyviolation",
      (event) => console.error(`Content Security Policy: ${event.effectiveDirective} ${event.blockedURI}`))""")
    docs = page.goto(link.get_attribute("href"))
    assert docs.headers["content-security-policy"] == EXPECTED_CSP
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("chatapi")
    spec = requests.get(f"{page_server}/openapi.json", timeout=10).json()
    operations = sum(method != "parameters" for path in spec["paths"].values() for method in path)
    expect(page.locator(".swagger-ui .opblock")).to_have_count(operations)
    page.locator(".swagger-ui .opblock-summary-path", has_text="/chats/create").click()  # opens: React at work
    expect(page.locator(".swagger-ui .opblock.is-open .opblock-body")).to_be_visible()
    assert refused == []


# Other web sites, through the owner's browser (chatapi/guard.py): a page of elsewhere.test (another origin on
# 127.0.0.1) and rebind.test (a name of an attacker's that resolves here), as conftest.py's LAUNCH_ARGS map them.


@pytest.fixture(scope="module")
def elsewhere_site():
    """A web site of someone else's on 127.0.0.1 (reached as http://elsewhere.test:PORT): an empty page."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>Somewhere else</title><p>Nothing to see.</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://elsewhere.test:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# What the other site's script tries: no preflight is asked for any of these (a text/plain body, mode no-cors,
# an EventSource), so before issue 20 the browser sent them all and the server acted on each.
FORGE = """async ({target, ask, regenerate, replace, file}) => {
  const text = {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}};
  await fetch(`${target}/chats/create`, {...text, body: JSON.stringify({name: "forged"})});
  await fetch(`${target}/chats/import`, {...text, body: JSON.stringify(file)});
  await fetch(`${target}/conversations/inference_internet/${regenerate}?replace=${replace}`, {mode: "no-cors"});
  await new Promise((resolve) => {
    const source = new EventSource(`${target}/conversations/inference/${ask}?max_tokens=8`);
    source.onerror = () => { source.close(); resolve(); };
  });
}"""


def test_another_site_can_neither_create_nor_import_a_chat_nor_start_a_reply(
    browser, page_server, elsewhere_site, client
):
    ask = new_chat(page_server, QUESTION)  # ends with a question: a stream would answer it
    regenerate = new_chat(page_server, QUESTION, "The capital of France is Paris.")  # replace= would redo it
    replace = history(page_server, regenerate)[-1]["id"]
    exported = requests.get(f"{page_server}/chats/{regenerate}/export", timeout=10).json()
    before = {chat_id: history(page_server, chat_id) for chat_id in (ask, regenerate)}
    listed = requests.get(f"{page_server}/chats/", timeout=10).json()

    context = browser.new_context()
    try:
        page = context.new_page()
        statuses = {}
        page.on("response", lambda response: statuses.setdefault(urlparse(response.url).path, response.status))
        page.goto(elsewhere_site)
        arguments = {"target": page_server, "ask": ask, "regenerate": regenerate, "replace": replace, "file": exported}
        page.evaluate(FORGE, arguments)
    finally:
        context.close()

    assert requests.get(f"{page_server}/chats/", timeout=10).json() == listed  # nothing created or imported
    assert requests.get(f"{page_server}/health", timeout=10).json()["model"]["replies"] == {"running": 0, "waiting": 0}
    assert {chat_id: history(page_server, chat_id) for chat_id in before} == before  # nothing deleted or added
    # The server refused each fetch (the page itself could not tell: their answers are opaque to it); the
    # EventSource's answer, refused by the browser for want of CORS headers, reaches no handler.
    paths = ["/chats/create", "/chats/import", f"/conversations/inference_internet/{regenerate}"]
    assert {path: statuses.get(path) for path in paths} == dict.fromkeys(paths, 403)


# The rebound page's script, on what is to the browser its own origin.
READ_AND_DELETE = """async (chatId) => {
  const answers = [];
  for (const [method, path] of [["GET", "/chats/"], ["GET", `/chats/${chatId}/conversations`],
                                ["DELETE", `/chats/delete/${chatId}`]]) {
    const response = await fetch(path, {method});
    answers.push([response.status, await response.text()]);
  }
  return answers;
}"""


def test_a_page_on_a_name_that_resolves_here_can_read_nothing(browser, page_server, client):
    """DNS rebinding: to the browser, http://rebind.test:PORT is the attacker's own origin, whose scripts may
    read whatever it answers; the server answers nothing to that Host."""
    chat_id = new_chat(page_server, "My secret plans")
    context = browser.new_context()
    try:
        page = context.new_page()
        rebound = f"http://rebind.test:{urlparse(page_server).port}"
        assert page.goto(f"{rebound}/").status == 403
        tries = page.evaluate(READ_AND_DELETE, chat_id)
    finally:
        context.close()
    assert [status for status, _ in tries] == [403, 403, 403]
    assert not any("My secret plans" in body or chat_id in body for _, body in tries)
    assert [m["message"] for m in history(page_server, chat_id)] == ["My secret plans"]


def test_the_page_works_on_localhost_too(open_tab, page_server):
    """The page at http://localhost:PORT (the other tests use http://127.0.0.1:PORT): a chat made, a question
    sent and its reply streamed and saved."""
    tab = open_tab(page_server.replace("127.0.0.1", "localhost"))
    page = tab.page
    page.goto(f"/?max_tokens=8&{GREEDY}")
    expect(page.locator("#model-status")).to_have_attribute("data-status", "ok")
    page.click("#new-chat")
    chat_id = page.locator("#chat-list .chat-item.active").get_attribute("data-id")
    page.fill("#message-input", QUESTION)
    page.press("#message-input", "Enter")
    expect(last_reply(page)).to_have_attribute("data-state", "done")
    assert [m["role"] for m in history(page_server, chat_id)] == ["Human", "Assistant"]
    assert tab.event_sources()[0]["url"].startswith("http://localhost:")


def test_a_phone_width_screen_gets_a_drawer_and_no_sideways_scrolling(open_tab, page_server, tmp_path):
    chat_id = new_chat(page_server, QUESTION, "The capital of France is Paris.")
    requests.put(f"{page_server}/chats/update/{chat_id}", json={"name": "Capitals"}, timeout=10)
    requests.post(f"{page_server}/chats/create", json={"name": "Another chat"}, timeout=10)
    tab = open_tab(page_server, viewport={"width": 390, "height": 844}, device_scale_factor=2, has_touch=True)
    page = tab.page
    page.goto(f"/#chat={chat_id}")
    expect(page.locator("#message-list .bubble")).to_have_count(2)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator("#sidebar").bounding_box()["x"] < 0  # off screen
    composer = page.locator("#composer").bounding_box()
    assert composer["x"] >= 0 and composer["x"] + composer["width"] <= 390 and composer["y"] + composer["height"] <= 844
    for bubble in page.locator("#message-list .bubble").all():
        box = bubble.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    save_screenshot(page, tmp_path, "screenshot-phone.png")

    page.click("#open-sidebar")
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    expect(page.locator("#chat-list .chat-name")).to_have_text(["Another chat", "Capitals"])
    page.locator("#chat-list .chat-open", has_text="Another chat").click()
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().right <= 0")
    expect(page.locator("#chat-title")).to_have_text("Another chat")


def test_screenshot_of_a_finished_reply(tab, page_server, tmp_path):
    for name in ("Weekend trip ideas", "Python list comprehensions", "Birthday message for Ana"):
        requests.post(f"{page_server}/chats/create", json={"name": name}, timeout=10)
    chat_id = new_chat(page_server, "Hi! Can you help me with some geography questions?")
    requests.put(f"{page_server}/chats/update/{chat_id}", json={"name": "Geography questions"}, timeout=10)
    page = tab.page
    page.goto(f"/?max_tokens=64&{GREEDY}#chat={chat_id}")
    pending = page.locator("#message-list .no-reply")
    pending.get_by_role("button", name="Get a reply").click()
    expect(last_reply(page)).to_have_attribute("data-state", "done")
    page.fill("#message-input", QUESTION)
    page.click("#send")
    expect(page.locator("#message-list .message")).to_have_count(4)
    expect(last_reply(page)).to_have_attribute("data-state", "done")
    expect(last_reply(page).locator(".bubble")).to_contain_text("Paris")
    page.fill("#message-input", "And of Italy?")
    expect(page.locator("#send")).to_be_enabled()
    # Side by side at desktop width: the chat list and the conversation.
    assert page.locator("#sidebar").bounding_box()["x"] == 0
    assert page.locator("#open-sidebar").is_hidden()
    expect(page.locator("#chat-list .chat-item.active .chat-name")).to_have_text("Geography questions")
    save_screenshot(page, tmp_path, "screenshot.png")
