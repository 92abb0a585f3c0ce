"""What the page tests (tests/page/) share besides their fixtures: the page's last reply, signing in on a server
with a key, axe-core's findings, screenshots for the README, and a Markdown answer with sources saved straight into
the database."""

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from chatapi.extensions import db
from chatapi.models import Chat, Conversation
from tests.support.server import ROOT

AXE = ROOT / "node_modules/axe-core/axe.min.js"
# The API key of tests/page/conftest.py's keyed_server.
PAGE_KEY = "page-key-" + uuid.uuid4().hex
# `make screenshot` sets this to docs/: the screenshots README.md and docs/page.md show are written there.
SCREENSHOT_DIR = os.environ.get("CHATAPI_SCREENSHOT_DIR")

# A Markdown reply with every feature the page draws, and an internet answer with its sources (the Markdown and
# the accessibility tests show both).
CODE = 'def erupt(times: int) -> str:\n    return "boom" * times\n'
FEATURES = f"""# Volcano notes

Some *emphasis*, **strong words**, ~~struck~~ and `inline code`.
A second line.

## Eruptions

1. First
2. Second
   - nested *item*

> A quote with a [link](https://example.org/volcano "The volcano page").

| Name | Height | Year |
|:-----|:------:|-----:|
| Etna | 3357 | 2024 |

```python
{CODE}```

---

Write to <mailto:team@example.org> or read https://example.org/plain."""

CITED = "**The Zorblax volcano erupts every 47 minutes.**\n\n- Tomatoes like [2] morning water."
SOURCES = [
    {"n": 1, "title": "Zorblax volcano facts", "url": "https://example.org/volcano", "snippet": ""},
    {"n": 2, "title": "Gardening", "url": "https://example.org/garden", "snippet": ""},
]


def last_reply(page: Page):
    return page.locator("#message-list .message.assistant").last


def wait_for_reply_text(page: Page, characters: int) -> None:
    page.wait_for_function(
        """(n) => {
          const bubbles = document.querySelectorAll("#message-list .message.assistant .bubble");
          return bubbles.length && bubbles[bubbles.length - 1].textContent.length > n;
        }""",
        arg=characters,
    )


def keyed_chat(base: str, *messages: str) -> str:
    """A chat holding Human messages, made over the API with the key; its id."""
    headers = {"Authorization": f"Bearer {PAGE_KEY}"}
    chat_id = requests.post(f"{base}/chats/create", json={"name": "keyed"}, headers=headers, timeout=10).json()["id"]
    for message in messages:
        body = {"chat_id": chat_id, "role": "Human", "message": message}
        assert requests.post(f"{base}/conversations/create", json=body, headers=headers, timeout=10).status_code == 201
    return chat_id


def keyed_history(base: str, chat_id: str) -> list[dict]:
    headers = {"Authorization": f"Bearer {PAGE_KEY}"}
    return requests.get(f"{base}/chats/{chat_id}/conversations", headers=headers, timeout=10).json()


def sign_in(page: Page, key: str = PAGE_KEY):
    """Answer the sign-in prompt, which must be on screen, with an API key (switching to it from a name and
    password if those are offered first); the prompt."""
    prompt = page.get_by_role("dialog", name="Sign in")
    expect(prompt).to_be_visible()
    use_key = prompt.get_by_role("button", name="Use an API key")
    if use_key.is_visible():
        expect(prompt.get_by_label("Name")).to_be_focused()
        use_key.click()
    expect(prompt.get_by_label("API key")).to_be_focused()
    prompt.get_by_label("API key").fill(key)
    prompt.get_by_role("button", name="Sign in").click()
    return prompt


def axe_violations(page: Page) -> list[dict]:
    """axe-core's serious and critical violations in the page as it is now, each with the elements it found and why.
    axe is handed to the page through the DevTools protocol (page.evaluate), which the page's policy does not
    apply to: the policy itself stays as it is served."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: `make clients` installs the npm packages")
    if not page.evaluate("() => Boolean(window.axe)"):
        page.evaluate(AXE.read_text())
    results = page.evaluate("() => axe.run(document, { resultTypes: ['violations'] })")
    return [
        {"id": rule["id"], "impact": rule["impact"], "help": rule["help"],
         "nodes": [(node["target"], node["failureSummary"]) for node in rule["nodes"]]}
        for rule in results["violations"]
        if rule["impact"] in ("serious", "critical")
    ]


def check_axe(page: Page) -> None:
    violations = axe_violations(page)
    assert violations == [], json.dumps(violations, indent=1)


def save_screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=path, animations="disabled")
    png = path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    if SCREENSHOT_DIR:
        Path(ROOT, SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(ROOT, SCREENSHOT_DIR, name))
    return path


def save_answer(app, chat_id: str, text: str, sources=None, citations=None) -> None:
    """An Assistant message straight into the database: no route takes sources and citations."""
    with app.app_context():
        chat = db.session.get(Chat, uuid.UUID(chat_id))
        db.session.add(Conversation(chat, "Assistant", text, sources=sources, citations=citations))
        db.session.commit()
