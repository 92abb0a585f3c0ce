"""Models on the page (issue 23), in headless Chromium against a real server and model: the model picker in a chat's
header (PUT /chats/update/<id> {"model"}) and the model's name under each reply, the Models panel (the models
listed, a pull from the tests' own Hugging Face endpoint with its progress bar, remove), a refused choice, the
panel on a phone, and axe-core on all of it.

The server keeps its models in a folder of this module's own: the catalog the tests change is nobody else's. The
second model is the bundled GGUF under another id (a link to it, registered straight in the catalog); the pulled
ones come from tests/support/fake_hub.py."""

import time
import uuid
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from chatapi import people
from chatapi.extensions import db
from chatapi.llm.catalog import BUNDLED_ID, Catalog, ModelEntry, read_header
from tests.support.chats import ENDLESS, QUESTION, history, new_chat
from tests.support.database import app_on, sqlite_url
from tests.support.page import check_axe, last_reply
from tests.support.server import ROOT, Server

BUNDLED = next((ROOT / "instance" / "models").glob("gemma-3-270m*.gguf"), None)
# The bundled GGUF again, as a pulled model would be: an id with a repo and a quantization.
SECOND = "acme/copy-GGUF:Q4_K_M"
GREEDY = "temperature=0"
TINY = f"max_tokens=4&{GREEDY}"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """The server's models: the bundled GGUF (a link to the one `make model` assembled) and a catalog of their own."""
    if BUNDLED is None:
        pytest.fail("instance/models holds no bundled GGUF: `make model` assembles it")
    folder = tmp_path_factory.mktemp("models")
    (folder / BUNDLED.name).symlink_to(BUNDLED)
    return folder


@pytest.fixture(scope="module")
def models_server(app, database_url, models_dir, tmp_path_factory) -> str:
    """A server on the page tests' database (no accounts) with this module's models folder."""
    log = tmp_path_factory.mktemp("models-server") / "gunicorn.log"
    server = Server(database_url, log, CHATAPI_PING_SECONDS="0.5", CHATAPI_MODELS_DIR=str(models_dir))
    yield server.wait_until_up().url
    server.stop()


def register_copy(models_dir: Path, model_id: str) -> None:
    """The bundled GGUF under another id, registered as a pull registers one: a link of its own in the hub folder,
    so that removing it deletes the link, never the bundled file."""
    catalog = Catalog(models_dir)
    repo = model_id.split(":")[0]
    link = catalog.hub_dir(repo) / f"copy-{uuid.uuid4().hex[:6]}.gguf"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(BUNDLED)
    header = read_header(BUNDLED)
    catalog.add(
        ModelEntry(model_id, str(link), BUNDLED.stat().st_size, source="hub", repo=repo, files=(link.name,),
                   created=time.time(), **header)
    )


def chat_model(base: str, chat_id: str) -> str | None:
    response = requests.get(f"{base}/chats/{chat_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["model"]


def wait_for(predicate, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.1)


def listed(base: str) -> list[str]:
    return [model["id"] for model in requests.get(f"{base}/models", timeout=10).json()]


# Every (state, model name) the reply under way showed: the name must be there while it streams, from `start`.
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


def picker(page: Page):
    return page.get_by_role("combobox", name="Model for this chat")


def test_the_picker_changes_the_chats_model_and_the_reply_names_the_model_that_wrote_it(
    open_tab, models_server, models_dir
):
    if SECOND not in listed(models_server):
        register_copy(models_dir, SECOND)
    chat_id = new_chat(models_server, *ENDLESS)  # a Human message last: the page offers "Get a reply"
    tab = open_tab(models_server)
    page = tab.page
    page.goto(f"/?max_tokens=24&{GREEDY}#chat={chat_id}")
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
    assert [m.get("model") for m in saved[-2:]] == [None, SECOND]  # Human messages name none

    # Reloaded, the saved reply still names it; the Human messages name nothing.
    page.reload()
    expect(page.locator("#message-list .message")).to_have_count(4)
    expect(last_reply(page).locator(".model-name")).to_have_text(SECOND)
    expect(page.locator("#message-list .message.human .model-name")).to_have_count(0)
    expect(picker(page)).to_have_value(SECOND)

    # Back to the server's default: null in the chat.
    picker(page).select_option("")
    wait_for(lambda: chat_model(models_server, chat_id) is None, "the chat's model back to the default")
    check_axe(page)


def test_a_refused_model_is_said_and_the_picker_shows_the_chats_model_again(open_tab, models_server, models_dir):
    gone = f"acme/gone-{uuid.uuid4().hex[:6]}-GGUF:Q8_0"
    register_copy(models_dir, gone)
    chat_id = new_chat(models_server, QUESTION)
    tab = open_tab(models_server)
    page = tab.page
    page.goto(f"/#chat={chat_id}")
    expect(picker(page).locator("option")).to_contain_text([gone])
    # Removed behind the page's back: the page still offers it, and the server refuses it (422 naming model).
    Catalog(models_dir).remove(gone)
    picker(page).select_option(gone)
    expect(page.locator("#alerts .alert")).to_contain_text("Could not change the chat's model")
    expect(page.locator("#alerts .alert")).to_contain_text("model")
    expect(picker(page)).to_have_value("")
    assert chat_model(models_server, chat_id) is None
    # The list was asked for again: the removed model is no longer offered.
    expect(picker(page).locator(f"option[value='{gone}']")).to_have_count(0)


def open_models_panel(page: Page):
    if page.locator("#open-sidebar").is_visible():  # a phone: the link is in the chat drawer
        page.locator("#open-sidebar").click()
    page.get_by_role("button", name="Models", exact=True).click()
    panel = page.get_by_role("dialog", name="Models")
    expect(panel).to_be_visible()
    return panel


def test_the_models_panel_lists_the_models_with_their_facts_and_axe_finds_nothing(open_tab, models_server, models_dir):
    if SECOND not in listed(models_server):
        register_copy(models_dir, SECOND)
    tab = open_tab(models_server)
    page = tab.page
    page.goto("/")
    panel = open_models_panel(page)
    expect(panel.get_by_label("Pull a model from Hugging Face")).to_be_focused()
    models = {model["id"]: model for model in requests.get(f"{models_server}/models", timeout=10).json()}
    rows = panel.locator("#model-list .model-item")
    expect(rows).to_have_count(len(models))
    # The default first, tagged, and without a Remove button; the others with one.
    default = rows.first
    expect(default.locator(".model-id")).to_have_text(BUNDLED_ID)
    expect(default.locator(".tag")).to_contain_text(["default"])
    expect(default.get_by_role("button")).to_have_count(0)
    size_mb = round(BUNDLED.stat().st_size / 1e6)
    expect(default.locator(".account-meta")).to_contain_text(f"{size_mb} MB · Q4_K_M · 32,768 tokens of context")
    second = rows.filter(has_text=SECOND)
    expect(second.get_by_role("button", name=f"Remove {SECOND}")).to_be_visible()
    assert models[BUNDLED_ID]["default"] and not models[SECOND]["default"]
    check_axe(page)


@pytest.mark.parametrize("viewport", [{"width": 390, "height": 844}])
def test_the_models_panel_works_on_a_phone_and_remove_asks_first(open_tab, models_server, models_dir, viewport):
    doomed = f"acme/doomed-{uuid.uuid4().hex[:6]}-GGUF:Q4_K_M"
    register_copy(models_dir, doomed)
    tab = open_tab(models_server, viewport=viewport, is_mobile=True, has_touch=True)
    page = tab.page
    page.goto("/")
    panel = open_models_panel(page)
    row = panel.locator("#model-list .model-item").filter(has_text=doomed)
    expect(row).to_be_visible()
    # Nothing of the panel runs off a phone's screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    box = panel.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
    check_axe(page)

    # Remove asks first; No keeps it.
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


PASSWORD = "correct horse battery staple"


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
