"""People on the page, in headless Chromium against a real server with accounts (issue 22 point 7): signing in with
a name and password or with a key, who is signed in and their menu (sign out, change password, their keys), the
People panel for admins, and axe-core on all of it.

The server runs on a database of this module's own: the people made here turn accounts on for the whole database,
and the other page tests need one without."""

import uuid

import pytest
import requests
from playwright.sync_api import Page, expect

from chatapi import people
from chatapi.extensions import db
from tests.support.database import app_on, sqlite_url
from tests.support.page import check_axe, sign_in
from tests.support.server import Server

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a much longer and newer passphrase"


@pytest.fixture(scope="module")
def accounts_app(tmp_path_factory):
    """An app on this module's database, to make people in it."""
    yield from app_on(sqlite_url(tmp_path_factory))


@pytest.fixture(scope="module")
def admin(accounts_app) -> dict:
    """The server's one admin."""
    return add_person(accounts_app, "boss", admin=True)


@pytest.fixture(scope="module")
def accounts_server(accounts_app, admin, tmp_path_factory) -> str:
    """A server with accounts on (a person exists) and no CHATAPI_API_KEYS."""
    log = tmp_path_factory.mktemp("accounts") / "gunicorn.log"
    database_url = accounts_app.config["SQLALCHEMY_DATABASE_URI"]
    # Many sign-ins from one address, some of them wrong on purpose: the limits are not what is tested here.
    server = Server(database_url, log, CHATAPI_PING_SECONDS="0.5", CHATAPI_RATE_LIMIT_AUTH_FAILURES="1000/minute")
    yield server.wait_until_up().url
    server.stop()


def add_person(app, name: str, admin: bool = False, password: str = PASSWORD) -> dict:
    """A person made straight in the database (the lead's people.create_user); a fresh name each time."""
    name = f"{name}-{uuid.uuid4().hex[:6]}"
    with app.app_context():
        user = people.create_user(name, password, admin=admin)
        db.session.commit()
        return {"id": user.id, "name": name, "password": password}


def add_key(app, person: dict, label: str = "made in a test") -> str:
    with app.app_context():
        _, secret = people.new_key(db.session.get(people.User, person["id"]), label)
        db.session.commit()
        return secret


def api_session(base: str, person: dict, password: str | None = None) -> requests.Session:
    """A requests session signed in as the person (POST /session, as the page does)."""
    session = requests.Session()
    credentials = {"name": person["name"], "password": password or person["password"]}
    response = session.post(f"{base}/session", json=credentials, timeout=10)
    assert response.status_code == 204, response.text
    return session


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def sign_in_with_password(page: Page, name: str, password: str):
    """Answer the sign-in form, which must be on screen, with a name and password; the form."""
    prompt = page.get_by_role("dialog", name="Sign in")
    expect(prompt).to_be_visible()
    expect(prompt.get_by_label("Name")).to_be_focused()
    prompt.get_by_label("Name").fill(name)
    prompt.get_by_label("Password").fill(password)
    prompt.get_by_role("button", name="Sign in").click()
    return prompt


def signed_in(page: Page, person: dict) -> None:
    """The form is gone and the header says who is signed in."""
    expect(page.get_by_role("dialog", name="Sign in")).to_be_hidden()
    expect(page.locator("#account-name")).to_have_text(person["name"])
    expect(account_button(page, person)).to_be_visible()


def account_button(page: Page, person: dict):
    return page.get_by_role("button", name=f"Signed in as {person['name']}")


def open_menu_item(page: Page, person: dict, item: str) -> None:
    account_button(page, person).click()
    page.get_by_role("button", name=item, exact=True).click()


def test_a_name_and_password_sign_in_a_wrong_one_is_refused_and_signing_out_ends_the_session(
    open_tab, accounts_server, accounts_app
):
    ana = add_person(accounts_app, "ana")
    tab = open_tab(accounts_server)
    page = tab.page
    page.goto("/")
    prompt = sign_in_with_password(page, ana["name"], "not the password")
    expect(prompt.get_by_role("alert")).to_have_text("That name and password do not match.")
    expect(prompt.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    expect(prompt.get_by_label("Password")).to_be_focused()
    assert tab.context.cookies() == []
    # Nobody of that name: the same answer.
    prompt.get_by_label("Name").fill("nobody-" + uuid.uuid4().hex[:6])
    prompt.get_by_label("Password").fill(PASSWORD)
    prompt.get_by_role("button", name="Sign in").click()
    expect(prompt.get_by_role("alert")).to_have_text("That name and password do not match.")

    # Names are lower case: typed otherwise, the person is found all the same.
    prompt.get_by_label("Name").fill(ana["name"].upper())
    prompt.get_by_label("Password").fill(PASSWORD)
    prompt.get_by_role("button", name="Sign in").click()
    signed_in(page, ana)
    expect(page.locator("#chat-list-empty")).to_be_visible()
    expect(page.locator("#alerts .alert")).to_have_count(0)
    (cookie,) = tab.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # A person who is no admin has no People in their menu.
    account_button(page, ana).click()
    menu = page.locator("#account-panel")
    expect(menu.get_by_role("button")).to_have_text(["Change password", "My keys", "Sign out"])
    expect(page.get_by_role("button", name="People")).to_be_hidden()

    # Signing out returns to the form, and a copy of the cookie no longer works.
    copy = {cookie["name"]: cookie["value"]}
    assert requests.get(f"{accounts_server}/me", cookies=copy, timeout=10).json()["name"] == ana["name"]
    page.get_by_role("button", name="Sign out").click()
    prompt = page.get_by_role("dialog", name="Sign in")
    expect(prompt).to_be_visible()
    expect(prompt.get_by_label("Name")).to_be_focused()
    expect(page.locator("#account-menu")).to_be_hidden()
    assert requests.get(f"{accounts_server}/me", cookies=copy, timeout=10).status_code == 401
    assert page.url == f"{accounts_server}/"


def test_a_key_signs_in_and_the_form_offers_it_first_next_time(open_tab, accounts_server, accounts_app):
    ben = add_person(accounts_app, "ben")
    key = add_key(accounts_app, ben)
    tab = open_tab(accounts_server)
    page = tab.page
    page.goto("/")
    prompt = sign_in(page, "chatapi-not-a-key-" + uuid.uuid4().hex)
    expect(prompt.get_by_role("alert")).to_have_text("That key is not valid.")
    expect(prompt.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    sign_in(page, key)
    signed_in(page, ben)

    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#chat-list .chat-name")).to_have_text(["New chat"])
    assert len(requests.get(f"{accounts_server}/chats/", headers=bearer(key), timeout=10).json()) == 1

    # Signed out, the form asks for a key first (the way they used last), and a name and password is a click away.
    open_menu_item(page, ben, "Sign out")
    expect(prompt).to_be_visible()
    expect(prompt.get_by_label("API key")).to_be_focused()
    prompt.get_by_role("button", name="Use a name and password").click()
    expect(prompt.get_by_label("Name")).to_be_focused()
    expect(prompt.get_by_label("API key")).to_be_hidden()


def test_changing_the_password(open_tab, accounts_server, accounts_app):
    cleo = add_person(accounts_app, "cleo")
    elsewhere = api_session(accounts_server, cleo)  # signed in somewhere else too
    tab = open_tab(accounts_server)
    page = tab.page
    page.goto("/")
    sign_in_with_password(page, cleo["name"], PASSWORD)
    signed_in(page, cleo)

    open_menu_item(page, cleo, "Change password")
    dialog = page.get_by_role("dialog", name="Change password")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Current password")).to_be_focused()
    check_axe(page)

    # The two new ones differ: said before asking the server.
    dialog.get_by_label("Current password").fill(PASSWORD)
    dialog.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    dialog.get_by_label("New password again").fill(NEW_PASSWORD + "!")
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog.get_by_role("alert")).to_have_text("The new passwords are not the same.")
    expect(dialog.get_by_label("New password again")).to_be_focused()
    # A wrong current password: the server's refusal, in the dialog (no sign-in form).
    dialog.get_by_label("Current password").fill("not the password")
    dialog.get_by_label("New password again").fill(NEW_PASSWORD)
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog.get_by_role("alert")).not_to_be_empty()
    expect(dialog.get_by_label("Current password")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("dialog", name="Sign in")).to_be_hidden()
    check_axe(page)

    dialog.get_by_label("Current password").fill(PASSWORD)
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog).to_be_hidden()
    expect(account_button(page, cleo)).to_be_focused()
    expect(page.locator("#alerts .alert.notice")).to_contain_text("Your password is changed.")
    # This page goes on (its new cookie); the other session has ended; the old password is refused.
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#chat-list .chat-name")).to_have_text(["New chat"])
    expect(page.get_by_role("dialog", name="Sign in")).to_be_hidden()
    assert elsewhere.get(f"{accounts_server}/me", timeout=10).status_code == 401
    old = {"name": cleo["name"], "password": PASSWORD}
    assert requests.post(f"{accounts_server}/session", json=old, timeout=10).status_code == 401
    api_session(accounts_server, cleo, NEW_PASSWORD)


def test_a_key_is_made_shown_once_copied_works_from_python_and_stops_when_revoked(
    open_tab, accounts_server, accounts_app
):
    dan = add_person(accounts_app, "dan")
    tab = open_tab(accounts_server, permissions=["clipboard-read", "clipboard-write"])
    page = tab.page
    page.goto("/")
    sign_in_with_password(page, dan["name"], PASSWORD)
    signed_in(page, dan)

    # By keyboard: the menu's button, My keys, the label's field.
    account_button(page, dan).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#account-panel")).to_be_visible()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="My keys")).to_be_focused()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="My keys")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Label")).to_be_focused()
    expect(dialog.locator("#key-list-empty")).to_have_text("No keys yet.")
    page.keyboard.type("backup script")
    page.keyboard.press("Enter")

    shown = dialog.get_by_label("Your new key")
    expect(shown).to_be_visible()
    key = shown.input_value()
    assert key.startswith("chatapi-") and len(key) > 40
    expect(dialog.get_by_role("button", name="Copy")).to_be_focused()
    expect(dialog.locator("#new-key-note")).to_have_text("Copy it now: it is shown this once, and never again.")
    items = dialog.locator("#key-list .account-item")
    expect(items).to_have_count(1)
    expect(items.first.locator(".key-label")).to_have_text("backup script")
    expect(items.first.locator(".key-prefix")).to_have_text(f"{key[:12]}…")
    assert key not in dialog.locator("#key-list").inner_text()
    check_axe(page)
    page.evaluate("navigator.clipboard.writeText('something else')")
    page.keyboard.press("Enter")
    expect(dialog.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key

    # It works from Python, as dan.
    me = requests.get(f"{accounts_server}/me", headers=bearer(key), timeout=10)
    assert me.status_code == 200 and me.json()["name"] == dan["name"]

    # Shown once: closed and opened again, the list has it, the key itself is gone from the page.
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(account_button(page, dan)).to_be_focused()
    open_menu_item(page, dan, "My keys")
    expect(dialog.get_by_label("Your new key")).to_be_hidden()
    expect(items).to_have_count(1)
    assert key not in page.content()

    # Revoked (after a confirmation), it stops at once.
    dialog.get_by_role("button", name="Revoke backup script").click()
    confirm = page.get_by_role("dialog", name="Revoke “backup script”?")
    expect(confirm).to_be_visible()
    check_axe(page)
    confirm.get_by_role("button", name="Revoke").click()
    expect(confirm).to_be_hidden()
    expect(items.first).to_have_class("account-item revoked")
    expect(items.first.locator(".account-meta")).to_contain_text("revoked")
    expect(dialog.get_by_role("button", name="Revoke backup script")).to_have_count(0)
    expect(dialog.get_by_label("Label")).to_be_focused()
    assert requests.get(f"{accounts_server}/me", headers=bearer(key), timeout=10).status_code == 401


def test_an_admin_adds_a_person_who_sees_none_of_the_admins_chats_then_manages_them(
    open_tab, accounts_server, accounts_app, admin
):
    tab = open_tab(accounts_server)
    page = tab.page
    page.goto("/")
    sign_in_with_password(page, admin["name"], PASSWORD)
    signed_in(page, admin)
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#chat-list .chat-item.active")).to_have_count(1)
    admins_chat = page.locator("#chat-list .chat-item.active").get_attribute("data-id")

    open_menu_item(page, admin, "People")
    panel = page.get_by_role("dialog", name="People")
    expect(panel).to_be_visible()
    expect(panel.get_by_label("Name", exact=True)).to_be_focused()
    expect(panel.locator("#people-list .person-name").filter(has_text=admin["name"])).to_have_count(1)
    # A name the server refuses: its reason, in the panel.
    panel.get_by_label("Name", exact=True).fill("Not a name!")
    panel.get_by_label("Password", exact=True).fill(PASSWORD)
    panel.get_by_role("button", name="Add").click()
    expect(panel.locator("#people-error")).to_contain_text("Could not add not a name!:")
    check_axe(page)

    eve = {"name": f"eve-{uuid.uuid4().hex[:6]}", "password": PASSWORD}
    panel.get_by_label("Name", exact=True).fill(eve["name"])
    panel.get_by_label("Password", exact=True).fill(PASSWORD)
    panel.get_by_role("button", name="Add").click()
    row = panel.locator("#people-list .account-item").filter(has_text=eve["name"])
    expect(row).to_have_count(1)
    expect(panel.locator("#people-error")).to_be_empty()
    expect(panel.get_by_label("Name", exact=True)).to_have_value("")
    expect(row.locator(".tag")).to_have_count(0)  # no admin
    check_axe(page)

    # Eve signs in elsewhere: none of the admin's chats, not even by its address; no People for her.
    other = open_tab(accounts_server)
    theirs = other.page
    theirs.goto(f"/#chat={admins_chat}")
    sign_in_with_password(theirs, eve["name"], PASSWORD)
    signed_in(theirs, eve)
    expect(theirs.locator("#alerts .alert-text")).to_have_text(["That chat does not exist any more."])
    expect(theirs.locator("#chat-list-empty")).to_have_text("No chats yet.")
    account_button(theirs, eve).click()
    expect(theirs.get_by_role("button", name="People")).to_be_hidden()

    # Reset her password.
    row.get_by_role("button", name=f"Reset password for {eve['name']}").click()
    reset = page.get_by_role("dialog", name=f"Reset password for {eve['name']}")
    expect(reset).to_be_visible()
    expect(reset.get_by_label("New password")).to_be_focused()
    check_axe(page)
    reset.get_by_label("New password").fill(NEW_PASSWORD)
    reset.get_by_role("button", name="Set password").click()
    expect(reset).to_be_hidden()
    expect(panel.locator("#people-status")).to_have_text(f"The password for {eve['name']} is changed.")
    api_session(accounts_server, eve, NEW_PASSWORD)

    # Disable her (after a confirmation): she can no longer sign in; enable her again.
    row.get_by_role("button", name=f"Disable {eve['name']}").click()
    page.get_by_role("dialog", name=f"Disable {eve['name']}?").get_by_role("button", name="Disable").click()
    expect(row.locator(".tag-disabled")).to_have_text("disabled")
    expect(row.get_by_role("button", name=f"Enable {eve['name']}")).to_be_focused()  # where Disable was
    credentials = {"name": eve["name"], "password": NEW_PASSWORD}
    assert requests.post(f"{accounts_server}/session", json=credentials, timeout=10).status_code == 401
    row.get_by_role("button", name=f"Enable {eve['name']}").click()
    expect(row.locator(".tag-disabled")).to_have_count(0)
    assert requests.post(f"{accounts_server}/session", json=credentials, timeout=10).status_code == 204

    # Make her an admin, and not again.
    row.get_by_role("button", name=f"Make admin: {eve['name']}").click()
    expect(row.locator(".tag-admin")).to_have_text("admin")
    expect(row.get_by_role("button", name=f"Remove admin from {eve['name']}")).to_be_focused()
    row.get_by_role("button", name=f"Remove admin from {eve['name']}").click()
    expect(row.locator(".tag-admin")).to_have_count(0)

    # Delete her, after a confirmation that says what goes with her; Cancel first keeps her.
    row.get_by_role("button", name=f"Delete {eve['name']}").click()
    confirm = page.get_by_role("dialog", name=f"Delete {eve['name']}?")
    expect(confirm).to_contain_text("all their chats will be deleted")
    check_axe(page)
    confirm.get_by_role("button", name="Cancel").click()
    expect(row).to_have_count(1)
    row.get_by_role("button", name=f"Delete {eve['name']}").click()
    confirm.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    assert requests.post(f"{accounts_server}/session", json=credentials, timeout=10).status_code == 401

    # The last admin cannot be deleted: the server's 409, shown in the panel.
    page.get_by_role("button", name=f"Delete {admin['name']}").click()
    page.get_by_role("dialog", name=f"Delete {admin['name']}?").get_by_role("button", name="Delete").click()
    expect(panel.locator("#people-error")).to_contain_text(f"Could not delete {admin['name']}:")
    expect(panel.locator("#people-list .person-name").filter(has_text=admin["name"])).to_have_count(1)
    check_axe(page)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_in_the_sign_in_form_and_the_account_menu(
    open_tab, accounts_server, accounts_app, admin, scheme
):
    tab = open_tab(accounts_server, color_scheme=scheme)
    page = tab.page
    page.goto("/")
    prompt = sign_in_with_password(page, admin["name"], "not the password")
    expect(prompt.get_by_role("alert")).to_have_text("That name and password do not match.")
    check_axe(page)
    prompt.get_by_role("button", name="Use an API key").click()
    check_axe(page)
    # Back to the name and password: the name is still there, the focus is on the password.
    prompt.get_by_role("button", name="Use a name and password").click()
    expect(prompt.get_by_label("Password")).to_be_focused()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    signed_in(page, admin)
    account_button(page, admin).click()
    expect(page.get_by_role("button", name="People")).to_be_visible()
    check_axe(page)
    page.keyboard.press("Escape")
    expect(page.locator("#account-panel")).to_be_hidden()
    expect(account_button(page, admin)).to_be_focused()
    open_menu_item(page, admin, "People")
    expect(page.locator("#people-list .account-item").first).to_be_visible()
    check_axe(page)
    page.keyboard.press("Escape")
    open_menu_item(page, admin, "My keys")
    page.get_by_label("Label").fill("axe")
    page.get_by_role("button", name="Make a key").click()
    expect(page.get_by_label("Your new key")).to_be_visible()
    check_axe(page)


def test_on_a_phone_the_header_shows_the_initial_and_the_panels_fit(open_tab, accounts_server, accounts_app, admin):
    tab = open_tab(accounts_server, viewport={"width": 390, "height": 844}, device_scale_factor=2, has_touch=True)
    page = tab.page
    page.goto("/")
    sign_in_with_password(page, admin["name"], PASSWORD)
    signed_in(page, admin)
    expect(page.locator("#account-initial")).to_have_text(admin["name"][0].upper())
    button = account_button(page, admin).bounding_box()
    assert button["x"] + button["width"] <= 390
    open_menu_item(page, admin, "People")
    panel = page.get_by_role("dialog", name="People")
    expect(panel.locator("#people-list .account-item").first).to_be_visible()
    box = panel.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    for row in panel.locator("#people-list .account-item").all():
        row_box = row.bounding_box()
        assert row_box["x"] >= 0 and row_box["x"] + row_box["width"] <= 390
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_the_admin_of_the_configured_keys_signs_in_with_one_and_gives_themselves_a_password(open_tab, keyed_server):
    tab = open_tab(keyed_server)
    page = tab.page
    page.goto("/")
    sign_in(page)  # CHATAPI_API_KEYS's key: the admin named admin, who has no password yet
    admin = {"name": "admin"}
    signed_in(page, admin)
    open_menu_item(page, admin, "Change password")
    dialog = page.get_by_role("dialog", name="Change password")
    dialog.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    dialog.get_by_label("New password again").fill(NEW_PASSWORD)
    dialog.get_by_role("button", name="Change password").click()  # no current password to give
    expect(dialog).to_be_hidden()
    expect(page.locator("#alerts .alert.notice")).to_contain_text("Your password is changed.")

    open_menu_item(page, admin, "Sign out")
    prompt = page.get_by_role("dialog", name="Sign in")
    expect(prompt.get_by_label("API key")).to_be_focused()
    prompt.get_by_role("button", name="Use a name and password").click()
    sign_in_with_password(page, "admin", NEW_PASSWORD)
    signed_in(page, admin)
    account_button(page, admin).click()
    expect(page.get_by_role("button", name="People")).to_be_visible()


def test_without_accounts_there_is_no_account_menu(tab):
    page = tab.page
    page.goto("/")
    expect(page.locator("#model-status")).to_have_attribute("data-status", "ok")
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#chat-list .chat-item.active")).to_have_count(1)
    expect(page.locator("#account-menu")).to_be_hidden()
    expect(page.get_by_role("dialog", name="Sign in")).to_be_hidden()
