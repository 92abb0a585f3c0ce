"""The internet-mode steps (search, safe fetch, extraction, ranking) against a real web server on 127.0.0.1."""

import uuid

import pytest
import requests

from chatapi.web.extract import extract
from chatapi.web.fetch import AddressPolicy, FetchError, fetch_page
from chatapi.web.rank import select_sources, sources_prompt
from chatapi.web.research import Settings, gather
from chatapi.web.search import SearchError, make_query, search
from tests.support.web import DRIP_BYTES, FACT

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


def settings(web, **changes) -> Settings:
    values = dict(
        backend="duckduckgo",
        search_url=f"{web.url}/duckduckgo/html/",
        results=7,
        fetch_timeout=2,
        allow="127.0.0.1",
        deadline=10,
    )
    return Settings(**{**values, **changes})


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
    findings = gather("volcano", settings(web, search_url=web.url + search_url), 600, words, lambda q: None)
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
