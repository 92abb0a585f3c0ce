"""Web search through DuckDuckGo's HTML endpoint or a SearXNG instance's JSON API."""

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urldefrag, urljoin, urlparse

import requests
from bs4 import BeautifulSoup

USER_AGENT = "chatapi/1.0 (self-hosted chat server; fetches pages to answer a user's question)"
DEFAULT_URLS = {"duckduckgo": "https://html.duckduckgo.com/html/", "searxng": "https://searx.be/search"}
MAX_QUERY_CHARS = 300


class SearchError(Exception):
    """The search backend failed or refused; the message says why, for the user."""


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str


def make_query(message: str) -> str:
    """The latest Human message, whitespace normalised and capped."""
    return re.sub(r"\s+", " ", message).strip()[:MAX_QUERY_CHARS].strip()


def search(query: str, backend: str, url: str | None, count: int, timeout: float) -> list[SearchResult]:
    """Up to `count` distinct http(s) results for the query; SearchError when the backend fails."""
    endpoint = url or DEFAULT_URLS[backend]
    params = {"q": query, "format": "json"} if backend == "searxng" else {"q": query}
    try:
        response = requests.get(endpoint, params=params, headers={"User-Agent": USER_AGENT}, timeout=timeout)
    except requests.RequestException as exc:
        raise SearchError(f"the search backend could not be reached ({type(exc).__name__})") from exc
    if response.status_code == 202:  # DuckDuckGo's answer to too many queries
        raise SearchError("the search backend is rate limiting (202)")
    if response.status_code != 200:
        raise SearchError(f"the search backend answered {response.status_code}")
    parse = parse_searxng if backend == "searxng" else parse_duckduckgo
    try:
        results = parse(response)
    except ValueError as exc:
        raise SearchError(f"the search backend's answer could not be read: {exc}") from exc
    return distinct_web_results(results, count)


def parse_duckduckgo(response: requests.Response) -> list[SearchResult]:
    soup = BeautifulSoup(response.content, "lxml")
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
                url=unwrap_duckduckgo(urljoin(response.url, link["href"])),
                snippet=snippet.get_text(" ", strip=True) if snippet else "",
            )
        )
    return results


def unwrap_duckduckgo(href: str) -> str:
    """DuckDuckGo links go through its redirector (/l/?uddg=<real url>); return the real URL."""
    parsed = urlparse(href)
    if parsed.path.startswith("/l/"):
        target = parse_qs(parsed.query).get("uddg")
        if target:
            return target[0]
    return href


def parse_searxng(response: requests.Response) -> list[SearchResult]:
    data = response.json()
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
