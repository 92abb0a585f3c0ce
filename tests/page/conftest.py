"""The page tests' fixtures: headless Chromium (Debian's, driven by Playwright), the real servers it opens the page
on, and tabs that check each page for errors and outside requests. SQLite only: what these test is the page; the API
under it runs on both databases in the other modules."""

import shutil

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.support.database import app_on, sqlite_url
from tests.support.page import PAGE_KEY
from tests.support.server import Server
from tests.support.web import web_settings

CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium, never a downloaded browser; as root it needs --no-sandbox. Nothing phones home.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Names an attacker's DNS would point at this machine, for this browser only (tests of chatapi/guard.py).
    "--host-resolver-rules=MAP rebind.test 127.0.0.1, MAP elsewhere.test 127.0.0.1",
]
# Every EventSource the page opens, so that tests can see its URL, whether it was closed, and the text of the
# token events it delivered to the page (__text).
TRACK_EVENT_SOURCES = """
(() => {
  const Native = window.EventSource;
  window.__eventSources = [];
  window.EventSource = class extends Native {
    constructor(url, init) {
      super(url, init);
      this.__text = "";
      this.addEventListener("message", (event) => { this.__text += JSON.parse(event.data).content; });
      window.__eventSources.push(this);
    }
  };
})();
"""

expect.set_options(timeout=30_000)


@pytest.fixture(scope="session", params=["sqlite"])
def database_url(tmp_path_factory) -> str:
    """SQLite only: the top conftest's database_url, without PostgreSQL."""
    return sqlite_url(tmp_path_factory)


@pytest.fixture(scope="session")
def app(database_url):
    """The app on the page tests' database: without one of its own, the session's app made on the other tests'
    database would be reused."""
    yield from app_on(database_url)


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def keyed_server(app, database_url, tmp_path_factory):
    """A server with an API key: the page must ask for it."""
    log = tmp_path_factory.mktemp("keyed") / "gunicorn.log"
    server = Server(database_url, log, CHATAPI_API_KEYS=PAGE_KEY, CHATAPI_PING_SECONDS="0.5")
    yield server.wait_until_up().url
    server.stop()


@pytest.fixture(scope="module")
def page_server(app, database_url, web, tmp_path_factory):
    """One real server for the module; the default grace period, so that a page reload keeps its reply."""
    log = tmp_path_factory.mktemp("browser") / "gunicorn.log"
    server = Server(database_url, log, CHATAPI_PING_SECONDS="0.5", **web_settings(web))
    yield server.wait_until_up().url
    server.stop()


class Tab:
    """A page in its own browser context, and what it did: uncaught errors and every URL it asked for."""

    def __init__(self, context: BrowserContext, base: str):
        self.context = context
        self.base = base
        self.page: Page = context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))

    def event_sources(self) -> list[dict]:
        return self.page.evaluate("window.__eventSources.map(s => ({url: s.url, state: s.readyState}))")

    def check(self) -> None:
        assert self.errors == [], "uncaught errors in the page"
        offsite = [url for url in self.requests if not url.startswith(self.base + "/")]
        assert offsite == [], "the page asked for something that is not on its server"


@pytest.fixture
def open_tab(browser: Browser, client):
    """Opens pages on a server (desktop size unless told); checks each for errors and outside requests."""
    tabs: list[Tab] = []

    def open_tab(base: str, **context_options) -> Tab:
        options = {"viewport": {"width": 1280, "height": 800}, **context_options}
        context = browser.new_context(base_url=base, **options)
        context.add_init_script(TRACK_EVENT_SOURCES)
        tabs.append(Tab(context, base))
        return tabs[-1]

    yield open_tab
    for tab in tabs:
        tab.context.close()
    for tab in tabs:
        tab.check()


@pytest.fixture
def tab(open_tab, page_server) -> Tab:
    return open_tab(page_server)
