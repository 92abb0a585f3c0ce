"""A small web on 127.0.0.1 for internet-mode tests: search backends and article pages."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlparse

FACT = "The Zorblax volcano on Kepler island erupts every 47 minutes, according to the island's observatory."
VOLCANO = f"""<!doctype html><html><head><title>Zorblax volcano facts</title>
<style>body {{ color: red }}</style><script>var tracking = "do not read me";</script></head>
<body><nav>Home | About | Contact</nav><header>Site header text</header>
<main><h1>The Zorblax volcano</h1>
<p>Kepler island is a small island with a single volcano and a research observatory.</p>
<p>{FACT}</p>
<p style="display:none">Hidden text that no reader sees.</p>
<p>Visitors can watch the eruptions from a safe platform on the northern shore.</p></main>
<aside>Related: other volcanoes</aside><footer>Copyright footer</footer></body></html>"""
FILLER = """<html><head><title>{title}</title></head><body><article>
<p>{text}</p></article></body></html>"""
DRIP_BYTES, DRIP_SECONDS = 120, 0.5  # /articles/slow: a byte every half second, for a minute
# DuckDuckGo's answer to a client it takes for a bot: 200, a challenge instead of results (its shape, shortened).
DUCKDUCKGO_CHALLENGE = """<!DOCTYPE html><html lang="en-US"><head><title>DuckDuckGo</title></head><body>
<form id="challenge-form" action="//duckduckgo.com/anomaly.js?sv=html&amp;cc=botnet&amp;q=volcano" method="POST">
<div class="anomaly-modal__mask"><div class="anomaly-modal__modal" data-testid="anomaly-modal">
<div class="anomaly-modal__title">Unfortunately, bots use DuckDuckGo too.</div>
<div class="anomaly-modal__description">Please complete the following challenge to confirm this search was made
by a human.</div><div class="anomaly-modal__instructions">Select all squares containing a duck:</div>
<div class="anomaly-modal__images"><img src="/assets/anomaly/images/challenge/1.jpg" alt=""></div>
<button class="anomaly-modal__submit" type="submit">Submit</button></div></div></form></body></html>"""
# DuckDuckGo's page for a query it found nothing for: 200, no results, and no challenge.
DUCKDUCKGO_NOTHING = """<html><body><div id="links" class="results">
<div class="no-results">No results.</div></div></body></html>"""
LATIN1 = (
    "<html><head><title>Caf\xe9 page</title></head><body><p>Cr\xe8me br\xfbl\xe9e at the caf\xe9.</p></body></html>"
)


class Web:
    """Serves the pages below; `requests` records every path asked for."""

    def __init__(self, host: str = "127.0.0.1"):
        self.requests: list[str] = []
        self.dripped: dict[str, int] = {}  # bytes the slow page has sent, by request path
        handler = type("Handler", (Handler,), {"web": self})
        self.server = ThreadingHTTPServer((host, 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://{host}:{self.port}"
        self.redirect_target = ""  # set by the tests: where /articles/redirect points
        self.pages_per_query = False  # results point at page addresses of their own query (cold caches)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def article_urls(self, query: str = "") -> list[str]:
        names = ["volcano", "filler-one", "redirect", "slow", "binary", "huge", "filler-two"]
        suffix = f"?for={quote(query)}" if self.pages_per_query else ""
        return [f"{self.url}/articles/{name}{suffix}" for name in names]

    def duckduckgo_page(self, query: str) -> str:
        """Results as DuckDuckGo's HTML endpoint writes them: redirector links, an ad, a duplicate, an ftp link."""
        blocks = ['<div class="result result--ad"><a class="result__a" href="https://ads.example/x">Ad</a></div>']
        urls = self.article_urls(query)
        for url in urls[:2] + [urls[0] + "#again", "ftp://files.example/readme"] + urls[2:]:
            link = f"//duckduckgo.com/l/?uddg={quote(url, safe='')}&rut=abc"
            title = urlparse(url).path.rsplit("/", 1)[-1].replace("-", " ").title()
            blocks.append(
                f'<div class="result results_links web-result"><h2><a class="result__a" href="{link}">{title}</a></h2>'
                f'<a class="result__snippet" href="{link}">Snippet about {title}</a></div>'
            )
        return "<html><body><div id='links'>" + "".join(blocks) + "</div></body></html>"

    def searxng_json(self) -> str:
        results = [{"url": u, "title": u.rsplit("/", 1)[-1], "content": "snippet"} for u in self.article_urls()]
        return json.dumps({"query": "q", "results": results})


class Handler(BaseHTTPRequestHandler):
    web: Web

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, body: bytes, content_type: str | None = "text/html; charset=utf-8", **headers):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        query = parse_qs(urlparse(self.path).query)
        self.web.requests.append(self.path)
        web = self.web
        if path == "/duckduckgo/html/":
            return self.send(200, web.duckduckgo_page(query.get("q", [""])[0]).encode())
        if path == "/searxng/search":
            assert query.get("format") == ["json"]
            return self.send(200, web.searxng_json().encode(), "application/json")
        if path == "/duckduckgo/challenge":
            return self.send(200, DUCKDUCKGO_CHALLENGE.encode())
        if path == "/duckduckgo/nothing":
            return self.send(200, DUCKDUCKGO_NOTHING.encode())
        if path == "/ratelimited":
            return self.send(202, b"<html>Please wait</html>")
        if path == "/broken":
            return self.send(500, b"oops")
        if path.startswith("/status/"):  # /status/429: that status, for the other ways of saying no
            return self.send(int(path.rsplit("/", 1)[-1]), b"<html>No.</html>")
        if path == "/articles/volcano":
            return self.send(200, VOLCANO.encode())
        if path.startswith("/articles/filler"):
            text = "Gardening tips: water tomatoes in the morning and keep the soil loose. " * 20
            return self.send(200, FILLER.format(title=path.rsplit("/", 1)[-1], text=text).encode())
        if path == "/articles/redirect":
            return self.send(302, b"", None, Location=web.redirect_target or f"{web.url}/articles/volcano")
        if path == "/articles/hop":
            return self.send(302, b"", None, Location="/articles/hop")  # forever
        if path == "/articles/slow":
            return self.drip()
        if path == "/articles/binary":
            return self.send(200, bytes(range(256)) * 64, "application/octet-stream")
        if path == "/articles/unlabelled-binary":
            return self.send(200, b"\x89PNG\r\n\x1a\n\x00\x00" * 100, None)
        if path == "/articles/huge":
            return self.send(200, b"<html><body><p>" + b"big page words " * 250_000 + b"</p></body></html>")
        if path == "/articles/latin1":
            return self.send(200, LATIN1.encode("latin-1"), "text/html; charset=iso-8859-1")
        if path == "/articles/plain":
            return self.send(200, b"Plain text line one.\n\nLine   two.", "text/plain; charset=utf-8")
        return self.send(404, b"not here")

    def drip(self) -> None:
        """A page that sends a byte every half second, for a minute; `web.dripped` counts what it sent."""
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.web.dripped[self.path] = 0
        try:
            for _ in range(DRIP_BYTES):
                self.wfile.write(b"x")
                self.wfile.flush()
                self.web.dripped[self.path] += 1
                time.sleep(DRIP_SECONDS)
        except OSError:
            pass


def web_settings(web: Web, search_path: str = "/duckduckgo/html/", **more: str) -> dict:
    """A server's settings for internet mode against this web (and nowhere else but 127.0.0.1)."""
    return {
        "CHATAPI_SEARCH_URL": web.url + search_path,
        "CHATAPI_FETCH_ALLOW": "127.0.0.1",
        # Deadlines far beyond what reading the pages takes, so that a page held to its deadline shows.
        "CHATAPI_FETCH_TIMEOUT": "30",
        "CHATAPI_RESEARCH_TIMEOUT": "60",
        **more,
    }
