"""The page's actions on a chat in headless Chromium against the real server and model: regenerate the last
reply, edit a message, the chat's system prompt, export and import; each reachable and operable by keyboard."""

import json
import re
import uuid

import requests
from playwright.sync_api import Page, expect

from chatapi.extensions import db
from chatapi.models import Chat, Conversation
from tests.support.chats import ENDLESS, GREEDY, QUESTION, history, new_chat
from tests.support.page import PAGE_KEY, keyed_chat, last_reply, sign_in, wait_for_reply_text

OLD_ANSWER = "An old answer, to be written again."
PROMPT = "You are a ship's cook. Answer every question about food, briefly."
SOURCES = [{"n": 1, "title": "Capitals of Europe", "url": "https://example.org/capitals", "snippet": "Paris"}]
# Every visible Assistant message, counted at each change of the list: a regenerate must never show two.
COUNT_VISIBLE_REPLIES = """
() => {
  window.__mostReplies = 0;
  const count = () => {
    const shown = [...document.querySelectorAll("#message-list .message.assistant")].filter((m) => !m.hidden);
    window.__mostReplies = Math.max(window.__mostReplies, shown.length);
  };
  new MutationObserver(count).observe(document.getElementById("message-list"),
    { childList: true, subtree: true, attributes: true, attributeFilter: ["hidden"] });
}
"""


def stream_urls(tab) -> list[str]:
    return [s["url"] for s in tab.event_sources()]


def press(page: Page, locator) -> None:
    """Operate a control by keyboard: focus it, then Enter."""
    locator.focus()
    expect(locator).to_be_focused()
    page.keyboard.press("Enter")


def test_regenerate_streams_a_new_last_reply_in_the_old_ones_place(tab, page_server):
    page = tab.page
    chat_id = new_chat(page_server, QUESTION, OLD_ANSWER)
    old = history(page_server, chat_id)[-1]
    page.goto(f"/?max_tokens=24&{GREEDY}#chat={chat_id}")
    expect(page.locator("#message-list .bubble")).to_have_text([QUESTION, OLD_ANSWER])
    # Only the last reply can be written again, and only the person's message edited.
    regenerate = page.get_by_role("button", name="Regenerate")
    expect(regenerate).to_have_count(1)
    expect(page.locator(f"#message-list .message[data-id='{old['id']}']").get_by_role("button")).to_have_text(
        ["Regenerate"]
    )
    expect(page.get_by_role("button", name="Edit")).to_have_count(1)

    page.evaluate(COUNT_VISIBLE_REPLIES)
    press(page, regenerate)
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "done")
    saved = history(page_server, chat_id)
    assert [m["role"] for m in saved] == ["Human", "Assistant"]
    assert saved[-1]["id"] != old["id"] and saved[-1]["message"] != OLD_ANSWER
    assert "Paris" in saved[-1]["message"]
    expect(page.locator("#message-list .message")).to_have_count(2)
    assert reply.get_attribute("data-id") == saved[-1]["id"]
    assert reply.locator(".bubble").text_content() == saved[-1]["message"]
    assert page.evaluate("window.__mostReplies") == 1, "the old reply showed beside the new one"
    assert stream_urls(tab) == [
        f"{page_server}/conversations/inference/{chat_id}?max_tokens=24&temperature=0&replace={old['id']}"
    ]
    # The new reply is the last one: it can be written again in turn.
    expect(reply.get_by_role("button", name="Regenerate")).to_be_visible()

    page.reload()
    expect(page.locator("#message-list .bubble")).to_have_text([QUESTION, saved[-1]["message"]])
    assert tab.event_sources() == []


def test_a_reload_in_the_middle_of_a_regenerate_joins_it_and_starts_no_other(tab, page_server):
    page = tab.page
    chat_id = new_chat(page_server, *ENDLESS, OLD_ANSWER)  # a reply that runs to max_tokens
    question, old = history(page_server, chat_id)[-2:]
    page.goto(f"/?max_tokens=300&{GREEDY}#chat={chat_id}")
    page.get_by_role("button", name="Regenerate").click()
    wait_for_reply_text(page, 10)
    page.reload()  # the server goes on; the page joins again, the old reply hidden until the new one is saved

    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "done", timeout=60_000)
    saved = history(page_server, chat_id)
    assert len(saved) == 4, "a second reply was started, or the old one kept"
    assert saved[-1]["id"] != old["id"] and saved[-1]["message"].startswith("I don't know.")
    expect(page.locator("#message-list .message")).to_have_count(4)
    assert reply.locator(".bubble").text_content() == saved[-1]["message"]
    query = f"max_tokens=300&temperature=0&after={question['id']}&replace={old['id']}"
    assert stream_urls(tab) == [f"{page_server}/conversations/inference/{chat_id}?{query}"]
    assert page.evaluate("localStorage.getItem('chatapi.pending')") is None


def test_a_regenerate_that_fails_keeps_the_old_reply_and_says_why(tab, page_server):
    page = tab.page
    chat_id = new_chat(page_server, QUESTION, OLD_ANSWER)
    page.goto(f"/?max_tokens=99999#chat={chat_id}")  # more than the server allows: the stream is refused
    page.get_by_role("button", name="Regenerate").click()
    expect(page.locator("#alerts .alert-text")).to_have_text(
        "Could not regenerate the reply: max_tokens: Must be at most 2048 (half of CHATAPI_N_CTX)."
    )
    expect(page.locator("#message-list .bubble")).to_have_text([QUESTION, OLD_ANSWER])
    expect(page.locator("#message-list .message.assistant")).to_have_count(1)
    expect(last_reply(page).get_by_role("button", name="Regenerate")).to_be_visible()
    expect(page.locator("#send")).to_be_visible()
    assert [m["message"] for m in history(page_server, chat_id)] == [QUESTION, OLD_ANSWER]
    assert [s["state"] for s in tab.event_sources()] == [2]


def test_edit_asks_deletes_what_followed_and_answers_again(tab, page_server):
    page = tab.page
    chat_id = new_chat(page_server, "What is the capital of Spain?", "Madrid.", "And of Italy?", "Rome.")
    first = history(page_server, chat_id)[0]
    page.goto(f"/?max_tokens=24&{GREEDY}#chat={chat_id}")
    expect(page.locator("#message-list .message")).to_have_count(4)
    expect(page.get_by_role("button", name="Edit")).to_have_count(2)
    human = page.locator(f"#message-list .message[data-id='{first['id']}']")

    # Escape puts the message back as it was, and the focus on its Edit button.
    press(page, human.get_by_role("button", name="Edit"))
    editor = human.get_by_role("textbox", name="Edit message")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("What is the capital of Spain?")
    editor.fill("Something else")
    page.keyboard.press("Escape")
    expect(editor).to_have_count(0)
    expect(human.locator(".bubble")).to_have_text("What is the capital of Spain?")
    expect(human.get_by_role("button", name="Edit")).to_be_focused()

    page.keyboard.press("Enter")
    editor.fill(QUESTION)
    page.keyboard.press("Enter")
    # Three messages follow: the page asks first; Cancel changes nothing and leaves the editor open.
    confirm = page.get_by_role("dialog", name="Edit and answer again?")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("The 3 messages after it will be deleted")
    confirm.get_by_role("button", name="Cancel").click()
    expect(confirm).to_be_hidden()
    expect(editor).to_have_value(QUESTION)
    assert [m["message"] for m in history(page_server, chat_id)] == [
        "What is the capital of Spain?",
        "Madrid.",
        "And of Italy?",
        "Rome.",
    ]

    human.get_by_role("button", name="Save").click()
    confirm.get_by_role("button", name="Delete and answer").click()
    reply = last_reply(page)
    expect(page.locator("#message-list .message")).to_have_count(2)
    expect(reply).to_have_attribute("data-state", "done")
    saved = history(page_server, chat_id)
    assert [(m["role"], m["id"] == first["id"]) for m in saved] == [("Human", True), ("Assistant", False)]
    assert saved[0]["message"] == QUESTION
    assert "Paris" in saved[1]["message"]
    expect(page.locator("#message-list .bubble")).to_have_text([QUESTION, saved[1]["message"]])
    assert stream_urls(tab) == [f"{page_server}/conversations/inference/{chat_id}?max_tokens=24&temperature=0"]


def test_editing_the_last_message_asks_nothing_and_an_empty_edit_is_not_saved(tab, page_server):
    page = tab.page
    chat_id = new_chat(page_server, "What is the capital of Spain?")
    page.goto(f"/?max_tokens=24&{GREEDY}#chat={chat_id}")
    expect(page.locator("#message-list .no-reply")).to_have_count(1)
    page.get_by_role("button", name="Edit").click()
    editor = page.get_by_role("textbox", name="Edit message")
    editor.fill("   ")
    page.keyboard.press("Enter")
    expect(editor).to_be_visible()
    editor.fill(QUESTION)
    page.keyboard.press("Enter")
    expect(last_reply(page)).to_have_attribute("data-state", "done")
    expect(page.get_by_role("dialog")).to_have_count(0)
    saved = history(page_server, chat_id)
    assert [m["message"] for m in saved][:1] == [QUESTION] and len(saved) == 2


def test_the_system_prompt_is_saved_shown_and_cleared_in_the_chats_settings(tab, page_server):
    page = tab.page
    chat_id = new_chat(page_server, QUESTION, "Paris.")
    page.goto(f"/#chat={chat_id}")
    expect(page.locator("#message-list .message")).to_have_count(2)
    expect(page.locator("#system-prompt")).to_be_hidden()

    press(page, page.get_by_role("button", name="Chat settings"))
    settings = page.get_by_role("dialog", name="Chat settings")
    prompt = settings.get_by_role("textbox", name="System prompt")
    expect(prompt).to_be_focused()
    expect(prompt).to_have_value("")
    # Too long: the server's reason, and nothing saved.
    prompt.fill("x" * 65_537)
    settings.get_by_role("button", name="Save").click()
    expect(settings.get_by_role("alert")).to_have_text("Not saved: system_prompt: Longer than maximum length 65536.")
    expect(prompt).to_have_attribute("aria-invalid", "true")
    assert requests.get(f"{page_server}/chats/{chat_id}", timeout=10).json()["system_prompt"] is None

    prompt.fill(PROMPT)
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(settings.get_by_role("button", name="Save")).to_be_focused()
    page.keyboard.press("Enter")
    expect(settings).to_be_hidden()
    assert requests.get(f"{page_server}/chats/{chat_id}", timeout=10).json()["system_prompt"] == PROMPT
    expect(page.locator("#system-prompt-text")).to_have_text(PROMPT)

    page.reload()
    expect(page.locator("#system-prompt-text")).to_have_text(PROMPT)
    page.get_by_role("button", name="Chat settings").click()
    expect(prompt).to_have_value(PROMPT)
    expect(settings.get_by_role("alert")).to_have_text("")
    page.keyboard.press("Escape")  # closes without saving
    expect(settings).to_be_hidden()

    page.get_by_role("button", name="Chat settings").click()
    prompt.fill("  ")
    settings.get_by_role("button", name="Save").click()
    expect(settings).to_be_hidden()
    expect(page.locator("#system-prompt")).to_be_hidden()
    assert requests.get(f"{page_server}/chats/{chat_id}", timeout=10).json()["system_prompt"] is None


def test_export_downloads_both_formats_and_import_makes_the_same_chat_again(tab, page_server, app, tmp_path):
    chat_id = new_chat(page_server, "Which city is the capital of France?")
    update = {"name": "Capitals", "system_prompt": PROMPT}
    requests.put(f"{page_server}/chats/update/{chat_id}", json=update, timeout=10)
    with app.app_context():  # an internet answer, with its sources and citations: no route takes those
        chat = db.session.get(Chat, uuid.UUID(chat_id))
        answer = "Paris is the capital of France [1]."
        citations = [{"start": 0, "end": len(answer), "n": 1}]
        db.session.add(Conversation(chat, "Assistant", answer, sources=SOURCES, citations=citations))
        db.session.commit()
    original = history(page_server, chat_id)
    page = tab.page
    page.goto(f"/#chat={chat_id}")
    expect(page.locator("#message-list .message")).to_have_count(2)

    # By keyboard: the menu opens with Enter, its first item is next.
    menu = page.get_by_role("button", name="Export chat")
    press(page, menu)
    expect(page.get_by_role("button", name="Export as JSON")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Export as JSON")).to_be_focused()
    with page.expect_download() as json_download:
        page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Export as JSON")).to_be_hidden()  # the menu closed
    exported = tmp_path / json_download.value.suggested_filename
    json_download.value.save_as(exported)
    assert exported.name == f"capitals-{chat_id[:8]}.json"
    document = json.loads(exported.read_text())
    assert document["chat"]["name"] == "Capitals" and document["chat"]["system_prompt"] == PROMPT
    assert [(c["role"], c["message"]) for c in document["conversations"]] == [
        (m["role"], m["message"]) for m in original
    ]

    menu.click()
    with page.expect_download() as markdown_download:
        page.get_by_role("button", name="Export as Markdown").click()
    assert markdown_download.value.suggested_filename == f"capitals-{chat_id[:8]}.md"
    text = open(markdown_download.value.path(), encoding="utf-8").read()  # noqa: SIM115
    assert text.startswith("# Capitals\n")
    assert "Which city is the capital of France?" in text and answer in text
    assert "[Capitals of Europe](<https://example.org/capitals>)" in text

    # Import, by keyboard too: the file chooser opens from the Import button.
    with page.expect_file_chooser() as chooser:
        press(page, page.get_by_role("button", name="Import"))
    chooser.value.set_files(exported)
    expect(page).not_to_have_url(re.compile(chat_id))  # another chat opens
    expect(page.locator("#message-list .message")).to_have_count(2)
    imported_id = page.locator("#chat-list .chat-item.active").get_attribute("data-id")
    assert page.url.endswith(f"#chat={imported_id}")
    expect(page.locator("#chat-title")).to_have_text("Capitals")
    expect(page.locator("#system-prompt-text")).to_have_text(PROMPT)
    imported = history(page_server, imported_id)
    keep = ("role", "message", "created_at", "sources", "citations")
    assert [{k: m[k] for k in keep} for m in imported] == [{k: m[k] for k in keep} for m in original]
    assert {m["id"] for m in imported}.isdisjoint(m["id"] for m in original)
    # Shown as the original is: the answer with its source link.
    reply = last_reply(page)
    expect(reply.locator(".sources a.source-link")).to_have_text(["Capitals of Europe"])
    expect(reply.locator(".bubble")).to_have_text(answer)
    expect(page.locator("#alerts .alert")).to_have_count(0)


def test_importing_a_bad_file_says_what_is_wrong_and_makes_no_chat(tab, page_server, tmp_path):
    page = tab.page
    page.goto("/")
    expect(page.locator("#model-status")).to_have_attribute("data-status", "ok")
    before = requests.get(f"{page_server}/chats/?limit=200", timeout=10).json()
    bad_role = {
        "chatapi_export": 1,
        "chat": {"name": "Bad", "created_at": "2024-01-01T00:00:00.000Z", "updated_at": "2024-01-01T00:00:00.000Z"},
        "conversations": [
            {
                "role": "Robot",
                "message": "beep",
                "created_at": "2024-01-01T00:00:00.000Z",
                "updated_at": "2024-01-01T00:00:00.000Z",
            }
        ],
    }
    files = {"bad-role.json": json.dumps(bad_role), "notes.json": "these are not JSON notes"}
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    page.set_input_files("#import-file", tmp_path / "bad-role.json")
    expect(page.locator("#alerts .alert-text")).to_have_text(
        ["Could not import bad-role.json: conversations.0.role: Must be one of: Human, Assistant."]
    )
    page.set_input_files("#import-file", tmp_path / "notes.json")
    alerts = page.locator("#alerts .alert-text")
    expect(alerts).to_have_count(2)
    expect(alerts.last).to_have_text("Could not import notes.json: request body must be JSON.")
    assert requests.get(f"{page_server}/chats/?limit=200", timeout=10).json() == before
    expect(page.locator("#chat-title")).to_have_text("New conversation")


def test_export_and_import_ask_for_the_key_when_the_session_is_gone(open_tab, keyed_server, tmp_path):
    """The downloads go through the page's requests (not plain links), so a lost session asks for the key."""
    base = keyed_server
    chat_id = keyed_chat(base, QUESTION)
    tab = open_tab(base)
    page = tab.page
    page.goto(f"/#chat={chat_id}")
    sign_in(page)
    expect(page.locator("#message-list .message.human")).to_have_count(1)

    tab.context.clear_cookies()
    page.get_by_role("button", name="Export chat").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="Export as JSON").click()
        sign_in(page)
    exported = tmp_path / download.value.suggested_filename
    download.value.save_as(exported)
    assert json.loads(exported.read_text())["conversations"][0]["message"] == QUESTION

    tab.context.clear_cookies()
    page.set_input_files("#import-file", exported)
    sign_in(page)
    expect(page).not_to_have_url(re.compile(chat_id))
    expect(page.locator("#message-list .message.human .bubble")).to_have_text([QUESTION])
    headers = {"Authorization": f"Bearer {PAGE_KEY}"}
    assert len(requests.get(f"{base}/chats/", headers=headers, timeout=10).json()) == 2
    expect(page.locator("#alerts .alert")).to_have_count(0)
