"""The internet-mode pipeline: query, search, fetch, extract, rank; each step timed.

Runs in a greenlet: pages are fetched concurrently, and parsing runs in the hub's thread pool
so that a large page never stalls the server.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent

from .cache import TTLCache
from .extract import Document, extract
from .fetch import AddressPolicy, FetchError, fetch_page
from .rank import Source, select_sources, sources_prompt
from .search import SearchError, SearchResult, make_query, search

CACHE_SECONDS = 300
ENOUGH_PAGES = 2
STRAGGLER_SECONDS = 1.0
searches = TTLCache(CACHE_SECONDS, 256)
documents = TTLCache(CACHE_SECONDS, 256)


def clear_caches() -> None:
    """Forget every search and page (the tests start each test with cold caches)."""
    searches.clear()
    documents.clear()


@dataclass
class Settings:
    backend: str
    search_url: str | None
    results: int
    fetch_timeout: float
    allow: str
    deadline: float  # seconds for the whole search-and-read phase

    @classmethod
    def from_config(cls, config) -> "Settings":
        return cls(
            backend=config["CHATAPI_SEARCH_BACKEND"],
            search_url=config["CHATAPI_SEARCH_URL"],
            results=config["CHATAPI_SEARCH_RESULTS"],
            fetch_timeout=config["CHATAPI_FETCH_TIMEOUT"],
            allow=config["CHATAPI_FETCH_ALLOW"],
            deadline=config["CHATAPI_RESEARCH_TIMEOUT"],
        )


@dataclass
class Findings:
    query: str
    sources: list[Source] = field(default_factory=list)
    warning: str | None = None
    timings: dict = field(default_factory=dict)  # search_ms, fetch_ms, rank_ms

    def prompt(self) -> str:
        """Text for the system prompt, or "" when there is nothing to cite."""
        return sources_prompt(self.sources) if self.sources else ""


def gather(
    question: str,
    settings: Settings,
    room: int,
    count_tokens: Callable[[list[str]], list[int]],
    on_query: Callable[[str], None],
) -> Findings:
    """Search for the question and pick the passages that best answer it within `room` tokens.

    Never raises for the web's failures: they become `warning`, and the model answers without sources.
    """
    findings = Findings(make_query(question))
    on_query(findings.query)
    deadline = time.monotonic() + settings.deadline
    started = time.monotonic()
    try:
        results = cached_search(findings.query, settings, deadline)
    except SearchError as exc:
        findings.warning = f"Web search failed: {exc}. Answering without web sources."
        return findings
    finally:
        findings.timings["search_ms"] = round((time.monotonic() - started) * 1000, 1)
    if not results:
        findings.warning = "Web search found nothing. Answering without web sources."
        return findings

    started = time.monotonic()
    pages = read_pages(results, settings, deadline)
    findings.timings["fetch_ms"] = round((time.monotonic() - started) * 1000, 1)
    if not pages:
        findings.warning = "None of the pages found could be read. Answering without web sources."
        return findings

    started = time.monotonic()
    snippets = {r.url: r.snippet for r in results}
    findings.sources = gevent.get_hub().threadpool.apply(
        select_sources, (findings.query, pages, snippets, room, count_tokens)
    )
    findings.timings["rank_ms"] = round((time.monotonic() - started) * 1000, 1)
    if not findings.sources:
        findings.warning = "The pages found had no text that fits. Answering without web sources."
    return findings


def cached_search(query: str, settings: Settings, deadline: float) -> list[SearchResult]:
    key = (settings.backend, settings.search_url, settings.results, query)
    results = searches.get(key)
    if results is None:
        timeout = max(0.1, deadline - time.monotonic())
        with gevent.Timeout(timeout, SearchError("the search took too long")):
            results = search(query, settings.backend, settings.search_url, settings.results, timeout)
        searches.put(key, results)
    return results


def read_pages(results: list[SearchResult], settings: Settings, deadline: float) -> list[Document]:
    """The readable pages among the results, fetched at once; a page that fails is left out, and a
    page reached twice (through a redirect) counts once."""
    policy = AddressPolicy(settings.allow)
    jobs = {gevent.spawn(read_page, r.url, policy, settings.fetch_timeout, deadline): r.url for r in results}
    pending, read, cutoff = set(jobs), 0, deadline
    while pending and time.monotonic() < cutoff:
        for job in gevent.wait(list(pending), timeout=cutoff - time.monotonic(), count=1):
            pending.discard(job)
            read += bool(job.successful() and job.value)
            if read == ENOUGH_PAGES:  # enough to answer from: stragglers get a little longer only
                cutoff = min(deadline, time.monotonic() + STRAGGLER_SECONDS)
    gevent.killall(list(pending), block=False)
    for job in pending:  # too slow this time: remembered as unreadable, so asking again is fast
        documents.put((jobs[job], policy.allow), False)
    pages = {}
    for job in jobs:
        if job.successful() and job.value and job.value.url not in pages:
            pages[job.value.url] = job.value
    return list(pages.values())


def read_page(url: str, policy: AddressPolicy, fetch_timeout: float, deadline: float) -> Document | None:
    """The page's text, or None when it cannot be read; both are remembered for a few minutes."""
    key = (url, policy.allow)
    known = documents.get(key)
    if known is not None:
        return known or None
    timeout = min(fetch_timeout, deadline - time.monotonic())
    if timeout <= 0:
        return None
    try:
        with gevent.Timeout(timeout, FetchError("the page took too long")):
            page = fetch_page(url, policy, timeout)
        document = gevent.get_hub().threadpool.apply(extract, (page,))
    except FetchError:
        document = None
    documents.put(key, document if document and document.text else False)
    return document if document and document.text else None
