"""The internet-mode pipeline: query, search (the backends in turn), fetch, extract, rank; each step timed.

Runs in a greenlet: pages are fetched concurrently, and parsing runs in the hub's thread pool
so that a large page never stalls the server.
"""

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent

from .cache import TTLCache
from .extract import Document, extract
from .fetch import AddressPolicy, FetchError, fetch_page
from .rank import Source, select_sources, sources_prompt
from .search import Backend, SearchError, SearchResult, backends_from, make_query, search

CACHE_SECONDS = 300
ENOUGH_PAGES = 2
STRAGGLER_SECONDS = 1.0
ENTRY_BYTES = 512  # what a cache entry holds besides its text: its key, the objects around the text


def results_bytes(results: list[SearchResult]) -> int:
    """What a search's results hold in memory, about."""
    return ENTRY_BYTES + sum(sys.getsizeof(r.title) + sys.getsizeof(r.url) + sys.getsizeof(r.snippet) for r in results)


def document_bytes(document: Document | bool) -> int:
    """What a page's text holds in memory, about (False: a page that could not be read)."""
    texts = (document.url, document.title, document.text) if document else ()
    return ENTRY_BYTES + sum(map(sys.getsizeof, texts))


# Pages are up to 2 MB each (fetch.MAX_BYTES), most a few dozen KB of text: 32 MB holds hundreds of those and at
# least 16 of the largest. A search's results are a few KB.
searches = TTLCache(CACHE_SECONDS, 256, 4 * 1024 * 1024, results_bytes)
documents = TTLCache(CACHE_SECONDS, 256, 32 * 1024 * 1024, document_bytes)


def clear_caches() -> None:
    """Forget every search and page (the tests start each test with cold caches)."""
    searches.clear()
    documents.clear()


@dataclass
class ResearchSettings:
    """Internet mode's settings: where to search and how the result pages are read (the model's are
    chatapi/llm's)."""

    backends: tuple[Backend, ...]  # asked in this order until one answers
    results: int
    fetch_timeout: float
    allow: str
    deadline: float  # seconds for the whole search-and-read phase

    @classmethod
    def from_config(cls, config) -> "ResearchSettings":
        """The settings of CHATAPI_*; ValueError for a search backend that cannot be used."""
        return cls(
            backends=backends_from(config["CHATAPI_SEARCH_BACKEND"], config["CHATAPI_SEARCH_URL"]),
            results=config["CHATAPI_SEARCH_RESULTS"],
            fetch_timeout=config["CHATAPI_FETCH_TIMEOUT"],
            allow=config["CHATAPI_FETCH_ALLOW"],
            deadline=config["CHATAPI_RESEARCH_TIMEOUT"],
        )


@dataclass(frozen=True)
class Failure:
    """A search backend that did not answer, and why."""

    backend: str
    error: SearchError

    def said(self) -> str:
        return self.error.said_of(self.backend)  # "duckduckgo is rate limiting (202)"

    def public(self) -> dict:
        return {"backend": self.backend, "reason": str(self.error)}


@dataclass
class Findings:
    query: str
    sources: list[Source] = field(default_factory=list)
    warning: str | None = None  # for the user: what failed, in sentences
    failed: list[Failure] = field(default_factory=list)  # the search backends that did not answer, in order
    timings: dict = field(default_factory=dict)  # search_ms, fetch_ms, rank_ms

    def prompt(self) -> str:
        """Text for the system prompt, or "" when there is nothing to cite."""
        return sources_prompt(self.sources) if self.sources else ""

    def warn(self, sentence: str) -> None:
        self.warning = f"{self.warning} {sentence}" if self.warning else sentence


def gather(
    question: str,
    settings: ResearchSettings,
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
    answered, results = search_in_turn(findings.query, settings, deadline, findings.failed)
    findings.timings["search_ms"] = round((time.monotonic() - started) * 1000, 1)
    failures = "; ".join(failure.said() for failure in findings.failed)
    if answered is None:
        findings.warn(f"Web search failed: {failures}. Answering without web sources.")
        return findings
    if findings.failed:  # said even when the answer has sources: the server's owner may want to know
        findings.warn(f"{failures}; searched with {answered.name} instead.")
    if not results:
        findings.warn("Web search found nothing. Answering without web sources.")
        return findings

    started = time.monotonic()
    pages = read_pages(results, settings, deadline)
    findings.timings["fetch_ms"] = round((time.monotonic() - started) * 1000, 1)
    if not pages:
        findings.warn("None of the pages found could be read. Answering without web sources.")
        return findings

    started = time.monotonic()
    snippets = {r.url: r.snippet for r in results}
    findings.sources = gevent.get_hub().threadpool.apply(
        select_sources, (findings.query, pages, snippets, room, count_tokens)
    )
    findings.timings["rank_ms"] = round((time.monotonic() - started) * 1000, 1)
    if not findings.sources:
        findings.warn("The pages found had no text that fits. Answering without web sources.")
    return findings


def search_in_turn(
    query: str, settings: ResearchSettings, deadline: float, failed: list[Failure]
) -> tuple[Backend | None, list[SearchResult]]:
    """The backend that answered and its results: the backends are asked in order until one answers (an
    empty list is an answer: it found nothing); each that fails or is rate limiting goes into `failed`.
    (None, []) when none answered."""
    # A backend's answer of the last few minutes first, in order: asking again would give the same pages,
    # and a backend that was rate limiting is not asked again to find it still is. Failures are not
    # remembered: the next question tries the first backend again.
    for backend in settings.backends:
        results = searches.get(search_key(backend, settings, query))
        if results is not None:
            return backend, results
    for tried, backend in enumerate(settings.backends):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            failed.append(Failure(backend.name, SearchError("was not tried (no time was left)")))
            continue
        # Every backend but the last gets an equal share of the time left, counting one more share for
        # reading the pages: a hanging backend is given up in time for the next one and the pages (5 of the
        # default 15 s when two are set), while a healthy one answers in a second or two, far within its share.
        # The last gets all that is left: without its answer there is nothing to read.
        later = len(settings.backends) - tried - 1
        timeout = remaining / (later + 2) if later else remaining
        try:
            # gevent's timeout bounds what search's own deadline does not: resolving the name, a last slow read.
            with gevent.Timeout(timeout, SearchError("took too long")):
                results = search(query, backend.name, backend.url, settings.results, timeout)
        except SearchError as exc:
            failed.append(Failure(backend.name, exc))
            continue
        searches.put(search_key(backend, settings, query), results)
        return backend, results
    return None, []


def search_key(backend: Backend, settings: ResearchSettings, query: str) -> tuple:
    """Which backend answered is part of the key: another backend's results are other pages."""
    return (backend.name, backend.url, settings.results, query)


def read_pages(results: list[SearchResult], settings: ResearchSettings, deadline: float) -> list[Document]:
    """The readable pages among the results, fetched at once; a page that fails is left out, and a
    page reached twice (through a redirect) counts once."""
    policy = AddressPolicy(settings.allow)
    jobs = {gevent.spawn(read_source, r.url, policy, settings.fetch_timeout, deadline): r.url for r in results}
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


def read_source(url: str, policy: AddressPolicy, fetch_timeout: float, deadline: float) -> Document | None:
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
