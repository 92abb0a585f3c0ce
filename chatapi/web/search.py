"""Web search through DuckDuckGo's HTML endpoint or a SearXNG instance's JSON API."""

import json
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urldefrag, urljoin, urlparse

import requests
import urllib3
from bs4 import BeautifulSoup

USER_AGENT = "chatapi/1.0 (self-hosted chat server; fetches pages to answer a user's question)"
DEFAULT_URLS = {"duckduckgo": "https://html.duckduckgo.com/html/", "searxng": "https://searx.be/search"}
# What each backend answers a client it finds too busy: DuckDuckGo 202 (or 403, 429, or a 200 challenge
# page, below); SearXNG's limiter 429 (its 403 means the JSON format is switched off, a real failure).
RATE_LIMIT_STATUSES = {"duckduckgo": (202, 403, 429), "searxng": (429,)}
MAX_QUERY_CHARS = 300
MAX_ANSWER_BYTES = 2 * 1024 * 1024


class SearchError(Exception):
    """The search backend failed; the message says how, to follow the backend's name ("answered 500")."""

    def said_of(self, backend: str) -> str:
        return f"{backend} {self}"


class RateLimited(SearchError):
    """The search backend refused because it finds us too busy ("rate limiting (202)")."""

    def said_of(self, backend: str) -> str:
        return f"{backend} is {self}"


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str


@dataclass(frozen=True)
class Backend:
    """One search backend to ask, and the endpoint to ask it at."""

    name: str
    url: str


def backends_from(setting: str, first_url: str | None = None) -> tuple[Backend, ...]:
    """The backends of CHATAPI_SEARCH_BACKEND, in the order to try them: names, each optionally with its
    endpoint (`duckduckgo,searxng=http://127.0.0.1:8888/search`). CHATAPI_SEARCH_URL (`first_url`) is the
    first one's endpoint when it names none; the others default to their public one. A name or URL that
    cannot be used raises ValueError naming the setting, so that it stops the server at start."""
    backends = []
    for item in (part.strip() for part in setting.split(",")):
        if not item:
            continue
        name, _, url = (piece.strip() for piece in item.partition("="))
        name = name.lower()
        if name not in DEFAULT_URLS:
            known = ", ".join(DEFAULT_URLS)
            raise ValueError(f"CHATAPI_SEARCH_BACKEND={setting!r}: unknown search backend {name!r} (known: {known})")
        if not url:
            url = (first_url if not backends else None) or DEFAULT_URLS[name]
        if urlparse(url).scheme not in ("http", "https") or not urlparse(url).hostname:
            raise ValueError(f"CHATAPI_SEARCH_BACKEND={setting!r}: {name}'s endpoint {url!r} is not an http(s) URL")
        backends.append(Backend(name, url))
    if not backends:
        raise ValueError(f"CHATAPI_SEARCH_BACKEND={setting!r} names no search backend")
    return tuple(backends)


def make_query(message: str) -> str:
    """The latest Human message, whitespace normalised and capped."""
    return re.sub(r"\s+", " ", message).strip()[:MAX_QUERY_CHARS].strip()


def search(query: str, backend: str, url: str | None, count: int, timeout: float) -> list[SearchResult]:
    """Up to `count` distinct http(s) results for the query, answered within `timeout` seconds in all;
    RateLimited when the backend finds us too busy, SearchError when it fails otherwise. An empty list is
    a real answer: the backend found nothing."""
    endpoint = url or DEFAULT_URLS[backend]
    params = {"q": query, "format": "json"} if backend == "searxng" else {"q": query}
    deadline = time.monotonic() + timeout
    try:
        with requests.get(
            endpoint, params=params, headers={"User-Agent": USER_AGENT}, timeout=timeout, stream=True
        ) as response:
            if response.status_code in RATE_LIMIT_STATUSES[backend]:
                raise RateLimited(f"rate limiting ({response.status_code})")
            if response.status_code != 200:
                raise SearchError(f"answered {response.status_code}")
            body = read_answer(response, deadline)
    except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise SearchError("took too long") from exc
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise SearchError(f"could not be reached ({type(exc).__name__})") from exc
    try:
        if backend == "searxng":
            results = parse_searxng(body)
        else:
            results = parse_duckduckgo(body, response.url)
    except ValueError as exc:
        raise SearchError(f"gave an answer that could not be read ({exc})") from exc
    return distinct_web_results(results, count)


def read_answer(response: requests.Response, deadline: float) -> bytes:
    """The answer's body, read by the deadline (requests' own timeout is per read: a backend that drips
    its answer would never meet it) and cut at a size no search results page reaches."""
    body = bytearray()
    while len(body) <= MAX_ANSWER_BYTES:
        if time.monotonic() > deadline:
            raise SearchError("took too long")
        # read1 returns what has arrived, so a slow drip is noticed at the deadline.
        chunk = response.raw.read1(65536, decode_content=True)
        if not chunk:
            return bytes(body)
        body += chunk
    raise SearchError(f"gave an answer that could not be read (more than {MAX_ANSWER_BYTES} bytes)")


def parse_duckduckgo(body: bytes, url: str) -> list[SearchResult]:
    """The results of DuckDuckGo's HTML page (ads left out); RateLimited for its challenge page."""
    soup = BeautifulSoup(body, "lxml")
    results = []
    for block in soup.select("div.result"):
        if "result--ad" in block.get("class", []):
            continue
        link = block.select_one("a.result__a")
        if link is None or not link.get("href"):
            continue
        snippet = block.select_one(".result__snippet")
        results.append(
            SearchResult(
                title=link.get_text(" ", strip=True),
                url=unwrap_duckduckgo(urljoin(url, link["href"])),
                snippet=snippet.get_text(" ", strip=True) if snippet else "",
            )
        )
    if not results and is_duckduckgo_challenge(soup):
        raise RateLimited("rate limiting (a bot challenge page)")
    return results


def is_duckduckgo_challenge(soup: BeautifulSoup) -> bool:
    """DuckDuckGo's "are you a bot" page, which it answers with 200 instead of results: a modal whose classes
    start with anomaly-modal, a challenge form, or its words. Only asked of a page without results, so that
    results about this very page are still results."""
    if soup.select_one('[class*="anomaly-modal"], form#challenge-form') is not None:
        return True
    return "bots use duckduckgo too" in soup.get_text(" ", strip=True).lower()


def unwrap_duckduckgo(href: str) -> str:
    """DuckDuckGo links go through its redirector (/l/?uddg=<real url>); return the real URL."""
    parsed = urlparse(href)
    if parsed.path.startswith("/l/"):
        target = parse_qs(parsed.query).get("uddg")
        if target:
            return target[0]
    return href


def parse_searxng(body: bytes) -> list[SearchResult]:
    data = json.loads(body)  # its ValueError says what is wrong
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError("no results list")
    return [
        SearchResult(title=str(r.get("title") or ""), url=str(r.get("url") or ""), snippet=str(r.get("content") or ""))
        for r in data["results"]
        if isinstance(r, dict)
    ]


def distinct_web_results(results: list[SearchResult], count: int) -> list[SearchResult]:
    """http(s) links only, each page once (fragments ignored), in the backend's order."""
    seen, kept = set(), []
    for result in results:
        url = urldefrag(result.url).url
        if urlparse(url).scheme not in ("http", "https") or url in seen:
            continue
        seen.add(url)
        kept.append(SearchResult(result.title or url, url, result.snippet))
        if len(kept) == count:
            break
    return kept
