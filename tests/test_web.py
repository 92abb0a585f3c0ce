"""The internet-mode steps (search, safe fetch, extraction, ranking) against a real web server on 127.0.0.1."""

import time
import uuid

import pytest
import requests

from chatapi import create_app
from chatapi.web import cache, research
from chatapi.web.cache import TTLCache
from chatapi.web.extract import extract
from chatapi.web.fetch import AddressPolicy, FetchError, fetch_page
from chatapi.web.rank import select_sources, sources_prompt
from chatapi.web.research import ResearchSettings, gather
from chatapi.web.search import (
    DEFAULT_URLS,
    Backend,
    RateLimited,
    SearchError,
    backends_from,
    make_query,
    parse_duckduckgo,
    search,
)
from tests.support.web import DRIP_BYTES, DUCKDUCKGO_CHALLENGE, FACT

ALLOW = AddressPolicy("127.0.0.1")


def words(texts: list[str]) -> list[int]:
    """Token counts stand-in for ranking tests (the model's tokenizer is not what they test)."""
    return [len(t.split()) * 2 for t in texts]


def test_query_is_the_message_normalised_and_capped():
    assert make_query("  what   is\n\tthis? ") == "what is this?"
    assert len(make_query("word " * 200)) <= 300


def test_duckduckgo_results_are_unwrapped_distinct_and_web_only(web):
    results = search("volcano", "duckduckgo", f"{web.url}/duckduckgo/html/", 5, 5)
    urls = [r.url for r in results]
    assert urls == web.article_urls()[:5]  # the ad, the #fragment duplicate and the ftp link are gone
    assert results[0].title == "Volcano" and results[0].snippet == "Snippet about Volcano"
    assert any("q=volcano" in path for path in web.requests)


def test_searxng_json_results(web):
    results = search("volcano", "searxng", f"{web.url}/searxng/search", 3, 5)
    assert [r.url for r in results] == web.article_urls()[:3]


@pytest.mark.parametrize(("path", "reason"), [("/ratelimited", r"rate limiting \(202\)"), ("/broken", "answered 500")])
def test_search_failures_are_reported(web, path, reason):
    with pytest.raises(SearchError, match=reason):
        search("volcano", "duckduckgo", web.url + path, 5, 5)


def test_unreachable_search_backend(web):
    with pytest.raises(SearchError, match="could not be reached"):
        search("volcano", "searxng", "http://127.0.0.1:9/search", 5, 2)


@pytest.mark.parametrize(
    ("backend", "path", "reason"),
    [
        ("duckduckgo", "/ratelimited", "rate limiting (202)"),
        ("duckduckgo", "/status/429", "rate limiting (429)"),
        ("duckduckgo", "/status/403", "rate limiting (403)"),
        ("duckduckgo", "/duckduckgo/challenge", "rate limiting (a bot challenge page)"),
        ("searxng", "/status/429", "rate limiting (429)"),
    ],
)
def test_rate_limiting_is_told_apart(web, backend, path, reason):
    with pytest.raises(RateLimited) as refused:
        search("volcano", backend, web.url + path, 5, 5)
    assert str(refused.value) == reason
    assert refused.value.said_of(backend) == f"{backend} is {reason}"


def test_a_searxng_403_is_a_failure_not_rate_limiting(web):
    """SearXNG answers 403 when its JSON format is switched off: its owner has something to fix."""
    with pytest.raises(SearchError) as failed:
        search("volcano", "searxng", web.url + "/status/403", 5, 5)
    assert type(failed.value) is SearchError and failed.value.said_of("searxng") == "searxng answered 403"


def test_a_page_without_results_is_found_nothing(web):
    assert search("volcano", "duckduckgo", web.url + "/duckduckgo/nothing", 5, 5) == []


def test_the_challenge_is_known_by_its_words_alone():
    words_only = b"<html><body><p>Unfortunately, bots use DuckDuckGo too.</p></body></html>"
    with pytest.raises(RateLimited):
        parse_duckduckgo(words_only, "https://html.duckduckgo.com/html/")
    assert b"anomaly-modal" in DUCKDUCKGO_CHALLENGE.encode()  # the local web's page has the real markers too


def test_results_that_mention_the_challenge_are_still_results():
    page = (
        '<div class="result"><a class="result__a" href="https://example.test/ddg">Why DuckDuckGo asks</a>'
        '<a class="result__snippet">Unfortunately, bots use DuckDuckGo too, it says.</a></div>'
    )
    results = parse_duckduckgo(page.encode(), "https://html.duckduckgo.com/html/")
    assert [r.url for r in results] == ["https://example.test/ddg"]


def test_a_backend_that_drips_its_answer_is_cut_at_the_deadline(web):
    """requests' timeout is per read, and the drip sends a byte every half second: only search's own
    deadline stops it (here without gevent's help, as in any caller outside the server)."""
    path = f"/articles/slow?test={uuid.uuid4()}"
    started = time.monotonic()
    with pytest.raises(SearchError, match="took too long"):
        search("volcano", "duckduckgo", web.url + path, 5, 1.5)
    assert time.monotonic() - started < 10  # the drip lasts a minute
    assert web.dripped[f"{path}&q=volcano"] <= DRIP_BYTES // 4


def test_backends_are_listed_in_order_with_their_own_urls():
    assert backends_from("duckduckgo") == (Backend("duckduckgo", DEFAULT_URLS["duckduckgo"]),)
    assert backends_from(" DuckDuckGo , searxng=http://127.0.0.1:8888/search ,") == (
        Backend("duckduckgo", DEFAULT_URLS["duckduckgo"]),
        Backend("searxng", "http://127.0.0.1:8888/search"),
    )
    # CHATAPI_SEARCH_URL is the first backend's endpoint when the list gives it none, and only the first's.
    assert backends_from("searxng,duckduckgo", "http://search.test/s") == (
        Backend("searxng", "http://search.test/s"),
        Backend("duckduckgo", DEFAULT_URLS["duckduckgo"]),
    )
    assert backends_from("searxng=http://a.test/s,searxng=http://b.test/s", "http://ignored.test/") == (
        Backend("searxng", "http://a.test/s"),
        Backend("searxng", "http://b.test/s"),
    )


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("duckduckgo,bing", "unknown search backend 'bing'"),
        ("google", "unknown search backend 'google'"),
        ("searxng=ftp://files.test/search", "not an http"),
        (",", "names no search backend"),
    ],
)
def test_a_backend_that_cannot_be_used_stops_the_app(database_url, setting, said):
    with pytest.raises(ValueError, match="CHATAPI_SEARCH_BACKEND") as refused:
        create_app({"SQLALCHEMY_DATABASE_URI": database_url, "CHATAPI_SEARCH_BACKEND": setting})
    assert said in str(refused.value)


def test_an_allowed_page_is_fetched(web):
    page = fetch_page(f"{web.url}/articles/volcano", ALLOW, 5)
    assert page.content_type == "text/html" and page.charset == "utf-8"
    assert FACT.encode() in page.body


def test_loopback_is_refused_unless_allowed(web):
    before = len(web.requests)
    with pytest.raises(FetchError, match="non-public address"):
        fetch_page(f"{web.url}/articles/volcano", AddressPolicy(""), 5)
    assert len(web.requests) == before


@pytest.mark.parametrize("allow", ["127.0.0.1", "127.0.0.0/31", "localhost", "example.test, localhost"])
def test_allow_list_takes_hosts_and_networks(web, allow):
    """Fetched through the name localhost: only the host-name entry can let it through."""
    before = len(web.requests)
    assert FACT.encode() in fetch_page(f"http://localhost:{web.port}/articles/volcano", AddressPolicy(allow), 5).body
    assert web.requests[before:] == ["/articles/volcano"]


@pytest.mark.parametrize("allow", ["", "example.test", "127.0.0.2"])
def test_a_host_name_not_in_the_allow_list_is_refused(web, allow):
    before = len(web.requests)
    with pytest.raises(FetchError, match="non-public address"):
        fetch_page(f"http://localhost:{web.port}/articles/volcano", AddressPolicy(allow), 5)
    assert len(web.requests) == before


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "192.168.0.1",
        "172.16.5.4",
        "169.254.169.254",
        "224.0.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "100.64.0.1",
        "240.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address):
    assert not AddressPolicy("").allows("example.test", address)


def test_public_addresses_are_allowed():
    assert AddressPolicy("").allows("example.test", "93.184.216.34")
    assert AddressPolicy("").allows("example.test", "2606:2800:220:1:248:1893:25c8:1946")


# IPv6 forms that carry an IPv4 address, each with a private one inside (10.0.0.1, 127.0.0.1, 169.254.169.254)
# and with a public one (93.184.216.34 = 5db8:d822).
CARRYING_PRIVATE = [
    "64:ff9b::10.0.0.1",  # NAT64, well-known prefix
    "64:ff9b::169.254.169.254",
    "64:ff9b:1::10.0.0.1",  # NAT64, local-use prefix
    "::10.0.0.1",  # IPv4-compatible
    "::127.0.0.1",
    "::ffff:0:10.0.0.1",  # SIIT
    "::ffff:10.0.0.1",  # IPv4-mapped
    "2002:a00:1::",  # 6to4 of 10.0.0.1
    "2002:7f00:1:5::1",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1 (its last 32 bits inverted)
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
]
CARRYING_PUBLIC = [
    "64:ff9b::93.184.216.34",
    "64:ff9b:1::93.184.216.34",
    "::ffff:93.184.216.34",
    "::ffff:0:93.184.216.34",
    "2002:5db8:d822::1",
    "2001:0:4136:e378:8000:63bf:a247:27dd",  # Teredo, client 93.184.216.34 behind the public server 65.54.227.120
]


@pytest.mark.parametrize("address", CARRYING_PRIVATE)
def test_ipv6_forms_carrying_a_private_ipv4_address_are_refused(address):
    assert not AddressPolicy("").allows("example.test", address)


@pytest.mark.parametrize("address", CARRYING_PUBLIC)
def test_ipv6_forms_carrying_a_public_ipv4_address_are_judged_by_it(address):
    assert AddressPolicy("").allows("example.test", address)


def test_ipv6_forms_carrying_an_ipv4_address_follow_the_allow_list():
    assert AddressPolicy("10.0.0.0/8").allows("example.test", "64:ff9b::10.0.0.1")
    assert AddressPolicy("10.0.0.0/8").allows("example.test", "2002:a00:1::")
    assert not AddressPolicy("10.0.0.0/8").allows("example.test", "64:ff9b::127.0.0.1")


@pytest.mark.parametrize(
    "address",
    [
        "fec0::1",  # site-local (deprecated, still routed inside some sites)
        "feff:ffff::1",
        "64:ff9b:1:5db8:d8:2200::",  # a local NAT64 prefix of another length: the IPv4 address inside is unknown
        "2001:0:a00:1:8000:63bf:a247:27dd",  # Teredo: a public client behind a private server
    ],
)
def test_other_non_public_ipv6_addresses_are_refused(address):
    assert not AddressPolicy("").allows("example.test", address)


def test_redirect_to_an_unlisted_address_is_refused_before_any_request(web, elsewhere):
    before = len(web.requests)
    web.redirect_target = f"{elsewhere.url}/secret"
    try:
        with pytest.raises(FetchError, match="127.0.0.2"):
            fetch_page(f"{web.url}/articles/redirect", ALLOW, 5)
    finally:
        web.redirect_target = ""
    assert web.requests[before:] == ["/articles/redirect"]  # the redirect itself was fetched
    assert elsewhere.requests == []


def test_the_connected_address_is_checked_too(elsewhere):
    """A host name allowed by the resolver check must still connect only where the policy allows."""
    policy = AddressPolicy("127.0.0.1")
    policy.check_host = lambda host, port: None  # as if DNS had said something else at resolve time
    with pytest.raises(FetchError, match="non-public address 127.0.0.2"):
        fetch_page(f"{elsewhere.url}/articles/volcano", policy, 5)
    assert elsewhere.requests == []


def test_the_guard_stays_inside_the_fetcher(web):
    """Fetching under a strict policy must not change what other HTTP clients in the process may do."""
    with pytest.raises(FetchError):
        fetch_page(f"{web.url}/articles/volcano", AddressPolicy(""), 5)
    assert requests.get(f"{web.url}/articles/volcano", timeout=5).status_code == 200


def test_redirects_are_followed_a_few_times_only(web):
    assert FACT.encode() in fetch_page(f"{web.url}/articles/redirect", ALLOW, 5).body
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch_page(f"{web.url}/articles/hop", ALLOW, 5)


def test_a_slow_drip_page_hits_the_whole_page_deadline(web):
    """The page drips for a minute; a 2 s deadline must stop reading long before its end."""
    path = f"/articles/slow?test={uuid.uuid4()}"
    with pytest.raises(FetchError, match="too long"):
        fetch_page(web.url + path, ALLOW, 2)
    # Bytes the page had sent when the fetcher gave up: about 4 in 2 s; a quarter of the page is
    # 15 s' worth, a bound no busy machine reaches unless the deadline is ignored.
    assert 0 < web.dripped[path] <= DRIP_BYTES // 4


def test_an_oversized_page_is_cut(web):
    page = fetch_page(f"{web.url}/articles/huge", ALLOW, 10)
    assert len(page.body) == 2 * 1024 * 1024  # of about 3.75 MB


@pytest.mark.parametrize("path", ["/articles/binary", "/articles/unlabelled-binary"])
def test_binary_pages_are_skipped(web, path):
    with pytest.raises(FetchError, match="not a readable page"):
        fetch_page(web.url + path, ALLOW, 5)


def test_extraction_keeps_the_content_and_drops_the_rest(web):
    document = extract(fetch_page(f"{web.url}/articles/volcano", ALLOW, 5))
    assert document.title == "Zorblax volcano facts"
    assert FACT in document.text and "Visitors can watch" in document.text
    for noise in ("tracking", "Home | About", "Site header", "Hidden text", "Related:", "Copyright", "color: red"):
        assert noise not in document.text


def test_charsets_are_honoured(web):
    document = extract(fetch_page(f"{web.url}/articles/latin1", ALLOW, 5))
    assert document.title == "Café page" and "Crème brûlée at the café." in document.text
    plain = extract(fetch_page(f"{web.url}/articles/plain", ALLOW, 5))
    assert plain.text == "Plain text line one.\nLine two."


def test_the_passage_with_the_fact_is_ranked_first_and_numbered(web):
    documents = [extract(fetch_page(f"{web.url}/articles/{name}", ALLOW, 5)) for name in ("filler-one", "volcano")]
    sources = select_sources("How often does the Zorblax volcano erupt?", documents, {}, 400, words)
    assert sources[0].n == 1 and sources[0].url.endswith("/articles/volcano")
    assert any(FACT in passage for passage in sources[0].passages)
    assert sum(words([p for s in sources for p in s.passages])) <= 400
    text = sources_prompt(sources)
    assert "[1] Zorblax volcano facts" in text and FACT in text and "untrusted" in text


def test_room_limits_what_is_kept(web):
    documents = [extract(fetch_page(f"{web.url}/articles/{name}", ALLOW, 5)) for name in ("filler-one", "volcano")]
    assert select_sources("volcano", documents, {}, 10, words) == []


def listed(web, *backends: tuple[str, str]) -> str:
    """CHATAPI_SEARCH_BACKEND for backends at paths of the local web: ("duckduckgo", "/ratelimited"), ..."""
    return ",".join(f"{name}={web.url}{path}" for name, path in backends)


def settings(web, backends: str = "", **changes) -> ResearchSettings:
    values = dict(
        backends=backends_from(backends or f"duckduckgo={web.url}/duckduckgo/html/"),
        results=7,
        fetch_timeout=2,
        allow="127.0.0.1",
        deadline=10,
    )
    return ResearchSettings(**{**values, **changes})


def test_gather_reads_what_it_can_and_cites_the_fact(web, elsewhere):
    before = len(web.requests)
    web.redirect_target = f"{elsewhere.url}/secret"
    queries = []
    try:
        findings = gather("How often does the Zorblax volcano erupt?", settings(web), 600, words, queries.append)
    finally:
        web.redirect_target = ""
    assert queries == ["How often does the Zorblax volcano erupt?"]
    assert findings.warning is None
    urls = [s.url for s in findings.sources]
    assert urls[0].endswith("/articles/volcano")
    assert not any(u.endswith(("/redirect", "/slow", "/binary")) for u in urls)
    assert FACT in findings.prompt()
    assert set(findings.timings) == {"search_ms", "fetch_ms", "rank_ms"}
    assert "/articles/redirect" in web.requests[before:]  # fetched, and its redirect refused
    assert elsewhere.requests == []


@pytest.mark.parametrize(("search_url", "warning"), [("/ratelimited", "rate limiting"), ("/broken", "answered 500")])
def test_gather_warns_when_search_fails(web, search_url, warning):
    findings = gather("volcano", settings(web, listed(web, ("duckduckgo", search_url))), 600, words, lambda q: None)
    assert warning in findings.warning and findings.sources == [] and findings.prompt() == ""


def test_gather_warns_when_no_page_can_be_read(web):
    findings = gather("volcano", settings(web, allow=""), 600, words, lambda q: None)
    assert "could be read" in findings.warning and findings.sources == []


def test_a_second_ask_is_served_from_the_cache(web):
    question = "cache check for the Zorblax volcano"
    before = len(web.requests)
    gather(question, settings(web), 600, words, lambda q: None)
    assert len(web.requests) > before  # the caches start empty: the first ask reads the web
    before = len(web.requests)
    again = gather(question, settings(web), 600, words, lambda q: None)
    assert len(web.requests) == before and again.sources


class Clock:
    """time.monotonic for the cache, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_is_bounded_by_bytes_as_well_as_entries(monkeypatch):
    monkeypatch.setattr(cache.time, "monotonic", Clock())
    texts = TTLCache(seconds=60, size=10, max_bytes=10, sizeof=len)
    for key in "abc":
        texts.put(key, "xxxx")
    assert (texts.get("a"), texts.get("b"), texts.get("c")) == (None, "xxxx", "xxxx")  # 12 bytes: the oldest went
    assert texts.bytes == 8
    texts.put("big", "y" * 11)  # more than the whole budget alone: not kept, and nothing else given up for it
    assert texts.get("big") is None and texts.bytes == 8 and len(texts) == 2
    texts.put("b", "z")  # in place of the old value, counted once
    assert texts.get("b") == "z" and texts.bytes == 5
    for key in range(20):
        texts.put(key, "")
    assert len(texts) == 10


def test_expired_entries_go_without_being_read(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(cache.time, "monotonic", clock)
    texts = TTLCache(seconds=60, size=10, max_bytes=100, sizeof=len)
    texts.put("old", "x" * 50)
    clock.now += 30
    texts.put("newer", "x" * 10)
    clock.now += 31
    texts.put("newest", "x")  # "old" expired, never read again: it goes now
    assert len(texts) == 2 and texts.bytes == 11
    clock.now += 30
    assert texts.get("newest") == "x" and len(texts) == 1 and texts.bytes == 1


def test_the_page_cache_holds_at_most_its_bytes(web, monkeypatch):
    """Each read of /articles/huge keeps about 2 MB of text: the cache lets the oldest go to stay within its bytes."""
    monkeypatch.setattr(research.documents, "max_bytes", 5 * 1024 * 1024)
    urls = [f"{web.url}/articles/huge?copy={n}" for n in range(3)]
    for url in urls:
        assert len(research.read_source(url, ALLOW, 10, time.monotonic() + 10).text) > 1_000_000
    assert research.documents.bytes <= 5 * 1024 * 1024 and len(research.documents) == 2
    before = len(web.requests)
    research.read_source(urls[2], ALLOW, 10, time.monotonic() + 10)
    assert len(web.requests) == before  # the latest is still there
    research.read_source(urls[0], ALLOW, 10, time.monotonic() + 10)
    assert len(web.requests) == before + 1  # the oldest went


# The gathers below read the first 3 results only (the volcano, a filler and a redirect): ranking the 2 MB
# page further down takes seconds that tell nothing about the search.


def searched(web, before: int) -> list[str]:
    """The search backends' paths the web was asked for since `before` (pages left out)."""
    return [path.split("?")[0] for path in web.requests[before:] if not path.startswith("/articles/")]


@pytest.mark.parametrize(
    ("first", "reason"),
    [("/ratelimited", "rate limiting (202)"), ("/duckduckgo/challenge", "rate limiting (a bot challenge page)")],
)
def test_a_rate_limiting_backend_hands_over_to_the_next(web, first, reason):
    before = len(web.requests)
    backends = listed(web, ("duckduckgo", first), ("searxng", "/searxng/search"))
    findings = gather(
        "How often does the Zorblax volcano erupt?", settings(web, backends, results=3), 600, words, lambda q: None
    )
    assert searched(web, before) == [first, "/searxng/search"]
    assert [failure.public() for failure in findings.failed] == [{"backend": "duckduckgo", "reason": reason}]
    assert findings.warning == f"duckduckgo is {reason}; searched with searxng instead."
    assert findings.sources and FACT in findings.prompt()


def test_every_backend_failing_is_told_backend_by_backend(web):
    backends = listed(web, ("duckduckgo", "/ratelimited"), ("searxng", "/broken"), ("searxng", "/status/403"))
    findings = gather("volcano", settings(web, backends, results=3), 600, words, lambda q: None)
    assert findings.warning == (
        "Web search failed: duckduckgo is rate limiting (202); searxng answered 500; searxng answered 403. "
        "Answering without web sources."
    )
    assert [f.public()["reason"] for f in findings.failed] == ["rate limiting (202)", "answered 500", "answered 403"]
    assert findings.sources == []


def test_found_nothing_is_an_answer_and_the_next_backend_is_not_asked(web):
    before = len(web.requests)
    backends = listed(web, ("duckduckgo", "/duckduckgo/nothing"), ("searxng", "/searxng/search"))
    findings = gather("volcano", settings(web, backends, results=3), 600, words, lambda q: None)
    assert searched(web, before) == ["/duckduckgo/nothing"]
    assert findings.warning == "Web search found nothing. Answering without web sources." and findings.failed == []


def test_a_hanging_backend_leaves_time_for_the_next_and_the_pages(web):
    """Two backends and 6 s: the first gets a third (the second and the pages a third each after it), so the
    one that drips for a minute is given up after about 2 s and the second answers with time left to read."""
    before = len(web.requests)
    backends = listed(web, ("duckduckgo", f"/articles/slow?test={uuid.uuid4()}"), ("searxng", "/searxng/search"))
    findings = gather(
        "How often does the Zorblax volcano erupt?",
        settings(web, backends, results=3, deadline=6),
        600,
        words,
        lambda q: None,
    )
    assert [f.public() for f in findings.failed] == [{"backend": "duckduckgo", "reason": "took too long"}]
    assert findings.warning == "duckduckgo took too long; searched with searxng instead."
    assert 1.9 <= findings.timings["search_ms"] / 1000 < 4  # its share, not the whole 6 s
    assert "/searxng/search" in searched(web, before)
    assert findings.timings["search_ms"] + findings.timings["fetch_ms"] < 6_500  # within the deadline
    assert findings.sources and FACT in findings.prompt()


def test_the_cache_keeps_which_backend_answered_and_never_a_failure(web):
    question = "cache by backend for the Zorblax volcano"
    fallback = listed(web, ("duckduckgo", "/ratelimited"), ("searxng", "/searxng/search"))
    gather(question, settings(web, fallback, results=3), 600, words, lambda q: None)
    before = len(web.requests)
    again = gather(question, settings(web, fallback, results=3), 600, words, lambda q: None)
    # SearXNG's answer is remembered: the rate-limiting backend is not asked again to find it still is.
    assert web.requests[before:] == [] and again.sources and again.warning is None
    before = len(web.requests)
    gather(
        question, settings(web, listed(web, ("duckduckgo", "/duckduckgo/html/")), results=3), 600, words, lambda q: None
    )
    assert searched(web, before) == ["/duckduckgo/html/"]  # another backend's answer is not this one's
    failing = listed(web, ("duckduckgo", "/broken"))
    for _ in range(2):
        before = len(web.requests)
        assert gather(question + "?", settings(web, failing, results=3), 600, words, lambda q: None).failed
        assert searched(web, before) == ["/broken"]  # asked again: failures are not remembered
