"""GET /conversations/inference_internet/<chat_id>: the real server and model, a real web on 127.0.0.1."""

import threading
import time

import pytest
import requests

from chatapi import create_app
from tests.support import wait_for
from tests.support.chats import add_message, history, new_chat
from tests.support.server import Server
from tests.support.sse import read_events, read_events_acting
from tests.support.web import web_settings

QUESTION = "How often does the Zorblax volcano erupt?"


def internet(base: str, chat_id: str, query: str = "max_tokens=24&temperature=0") -> str:
    return f"{base}/conversations/inference_internet/{chat_id}?{query}"


@pytest.fixture
def internet_server(start_server, web, elsewhere):
    web.redirect_target = f"{elsewhere.url}/secret"  # one result redirects where nothing may go
    yield start_server(**web_settings(web))
    web.redirect_target = ""


def test_answer_is_grounded_in_numbered_sources_and_saved_with_them(internet_server, web, elsewhere, client):
    base = internet_server.url
    chat_id = new_chat(base, QUESTION)
    events = read_events(internet(base, chat_id))
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["start", "search", "sources"] and kinds[-1] == "done"
    assert set(kinds[3:-1]) == {"message"}
    message_id = events[0]["data"]["message_id"]
    assert [e["id"] for e in events] == [f"{message_id}.{i}" for i in range(len(events))]
    assert events[0]["data"]["mode"] == "internet"
    assert events[1]["data"] == {"query": QUESTION}

    sources = events[2]["data"]["sources"]
    assert [s["n"] for s in sources] == list(range(1, len(sources) + 1))
    assert sources[0]["url"] == f"{web.url}/articles/volcano" and sources[0]["title"] == "Zorblax volcano facts"
    assert sources[0]["snippet"] == "Snippet about Volcano"
    urls = [s["url"] for s in sources]
    for unreadable in ("slow", "binary", "redirect"):
        assert f"{web.url}/articles/{unreadable}" not in urls
    assert elsewhere.requests == []

    done = events[-1]["data"]
    assert done["message"]["sources"] == sources
    assert {"search_ms", "fetch_ms", "rank_ms"} <= set(done["timings"])
    # Once two pages are read, the slow-drip page gets one more second, not its whole 30 s deadline.
    assert done["timings"]["fetch_ms"] < 15_000
    assert done["usage"]["prompt_tokens"] > 150  # the passages are in the prompt
    saved = history(base, chat_id)
    assert saved[0]["sources"] is None and saved[-1]["sources"] == sources
    assert saved[0]["citations"] is None and saved[-1]["citations"] == done["citations"]


def check_citations(message: dict, citations: list[dict]) -> None:
    """Citations are whole sentences of the saved text, each naming one of its sources."""
    text, numbers = message["message"], {s["n"] for s in message["sources"]}
    assert citations == message["citations"]
    assert citations == sorted(citations, key=lambda c: c["start"])
    for c in citations:
        assert set(c) == {"start", "end", "n"} and c["n"] in numbers
        assert 0 <= c["start"] < c["end"] <= len(text)
        sentence = text[c["start"] : c["end"]]
        assert sentence == sentence.strip()


def test_the_answer_cites_the_page_that_says_it(internet_server, client):
    base = internet_server.url
    chat_id = new_chat(base, QUESTION)
    done = read_events(internet(base, chat_id))[-1]["data"]
    message = done["message"]
    check_citations(message, done["citations"])
    # The model's answer states the volcano page's fact, and that sentence cites the page.
    assert "47 minutes" in message["message"]
    fact = [c for c in done["citations"] if "47 minutes" in message["message"][c["start"] : c["end"]]]
    assert [c["n"] for c in fact] == [1] and message["sources"][0]["url"].endswith("/articles/volcano")
    saved = requests.get(f"{base}/conversations/{message['id']}", timeout=10).json()
    assert saved["citations"] == done["citations"] and saved["message"] == message["message"]


def test_a_stopped_answer_cites_what_was_written(internet_server, client):
    # The model answers this with one sentence over and over, until it is stopped.
    question = "Where can visitors watch the eruptions of the Zorblax volcano, and how often does it erupt?"
    base = internet_server.url
    chat_id = new_chat(base, question)

    def stop() -> None:
        requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10)

    # start, search, sources, then 24 tokens: a sentence or more is written.
    events = read_events_acting(internet(base, chat_id, "max_tokens=256&temperature=0"), 27, stop)
    done = events[-1]["data"]
    assert done["finish_reason"] == "cancelled" and done["usage"]["completion_tokens"] < 256
    check_citations(done["message"], done["citations"])
    assert done["citations"], done["message"]["message"]
    assert history(base, chat_id)[-1]["citations"] == done["citations"]


@pytest.mark.parametrize("search_path", ["/ratelimited", "/broken"])
def test_a_failing_search_gives_a_warning_and_still_an_answer(start_server, web, client, search_path):
    base = start_server(**web_settings(web, search_path)).url
    chat_id = new_chat(base, QUESTION)
    events = read_events(internet(base, chat_id))
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["start", "search", "warning"] and "sources" not in kinds
    assert "search failed" in events[2]["data"]["message"]
    done = events[-1]
    assert done["event"] == "done" and done["data"]["message"]["message"]
    assert done["data"]["message"]["sources"] is None
    assert done["data"]["message"]["citations"] is None and done["data"]["citations"] is None  # nothing to cite


def test_sources_survive_a_restart(start_server, web, client):
    first = start_server(**web_settings(web))
    chat_id = new_chat(first.url, QUESTION)
    done = read_events(internet(first.url, chat_id))[-1]["data"]
    first.stop()
    second = start_server(**web_settings(web))
    saved = requests.get(f"{second.url}/conversations/{done['message']['id']}", timeout=10).json()
    assert saved["sources"] == done["message"]["sources"] and saved["sources"]


def test_asking_twice_uses_the_cache(internet_server, web, client):
    base = internet_server.url
    read_events(internet(base, new_chat(base, QUESTION)))
    before = len(web.requests)
    events = read_events(internet(base, new_chat(base, QUESTION)))
    assert len(web.requests) == before
    assert events[2]["event"] == "sources"


def test_a_regenerate_with_the_chats_own_system_prompt(internet_server, client):
    base = internet_server.url
    chat_id = new_chat(base, QUESTION)
    first = read_events(internet(base, chat_id))[-1]["data"]
    question, old = history(base, chat_id)
    assert old == first["message"] and old["sources"]
    prompt = {"system_prompt": "Be brief."}  # shorter than the server's
    assert requests.put(f"{base}/chats/update/{chat_id}", json=prompt, timeout=10).status_code == 200
    events = read_events(internet(base, chat_id, f"max_tokens=24&temperature=0&replace={old['id']}"))
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["start", "search", "sources"] and kinds[-1] == "done"
    done = events[-1]["data"]
    new = done["message"]
    assert new["sources"] == events[2]["data"]["sources"] == old["sources"]  # the same pages (cached)
    assert new["citations"] == done["citations"]
    assert history(base, chat_id) == [question, new]  # the old answer replaced
    # The same question, history and sources: only the system prompt differs, and it is the chat's.
    assert done["usage"]["prompt_tokens"] < first["usage"]["prompt_tokens"]


def test_stopping_during_the_web_search_ends_the_reply_before_the_model_runs(start_server, web, client):
    # The search backend drips its answer a byte at a time: the reply is stuck in its research phase.
    base = start_server(**web_settings(web, "/articles/slow", CHATAPI_RESEARCH_TIMEOUT="3")).url
    chat_id = new_chat(base, QUESTION)
    earlier = len(web.requests)  # the web is the whole session's
    result: dict = {}
    reader = threading.Thread(target=lambda: result.update(events=read_events(internet(base, chat_id))))
    reader.start()

    def searching() -> bool:
        return any(path.startswith("/articles/slow?") for path in web.requests[earlier:])

    wait_for(lambda: searching() or not reader.is_alive(), 60, "the search request")
    assert searching()
    stopped = requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10)
    assert stopped.json() == {"chat_id": chat_id, "stopped": True}
    reader.join()
    events = result["events"]
    assert "message" not in [e["event"] for e in events]
    done = events[-1]
    assert done["event"] == "done" and done["data"]["finish_reason"] == "cancelled"
    assert done["data"]["usage"]["completion_tokens"] == 0 and done["data"]["message"] is None
    assert len(history(base, chat_id)) == 1


# About 600 tokens of earlier conversation, so that reading it again or not shows in the token counts.
EARLIER = [f"Tell me about day {n} of the trip." if n % 2 == 0 else "It rained. " * 30 for n in range(10)]


@pytest.mark.parametrize(("layout", "history_cached"), [("sources-first", True), ("system", False)])
def test_an_internet_turn_in_a_warm_chat_reads_only_the_sources_and_the_question(
    start_server, web, client, layout, history_cached
):
    """With the sources in the latest Human turn, the chat's cache survives: only the sources and the
    question are read. At the head of the system prompt (the old layout) they change the prompt's
    beginning, and every internet turn reads the whole chat again."""
    base = start_server(**web_settings(web, CHATAPI_SOURCES_LAYOUT=layout)).url
    chat_id = new_chat(base, *EARLIER, QUESTION)
    web.pages_per_query = True  # the next question finds other pages (other addresses), as it would on the web
    try:
        first = read_events(internet(base, chat_id, "max_tokens=8&temperature=0"))[-1]["data"]
        add_message(base, chat_id, "And how tall is the volcano?")
        again = read_events(internet(base, chat_id, "max_tokens=8&temperature=0"))[-1]["data"]
    finally:
        web.pages_per_query = False
    assert again["message"]["sources"]  # the sources are in the prompt
    cached, prompt = again["usage"]["cached_tokens"], again["usage"]["prompt_tokens"]
    assert prompt > first["usage"]["prompt_tokens"] // 2 + 150
    if history_cached:
        # Everything but the first turn's question, its sources, and what follows.
        assert cached >= 450, again["usage"]
    else:
        assert cached < 100, again["usage"]


def test_the_history_is_read_while_the_web_is_searched(start_server, web, client):
    """A chat nobody has asked before: its history is read into the cache while the web is searched. The search
    backend here drips its answer until the research deadline (then the reply goes on without sources), which
    gives the model, however slow the machine, the time to read the whole history ahead; the reply's own
    reading then finds it all cached (a new chat finds at most the system prompt's ~25 tokens in another
    chat's cache)."""
    base = start_server(**web_settings(web, "/articles/slow", CHATAPI_RESEARCH_TIMEOUT="20")).url
    chat_id = new_chat(base, *EARLIER, QUESTION)
    events = read_events(internet(base, chat_id, "max_tokens=8&temperature=0"))
    assert "warning" in [e["event"] for e in events]  # the search never answered
    done = events[-1]["data"]
    assert done["usage"]["cached_tokens"] >= 450, done["usage"]


def test_an_unknown_sources_layout_stops_the_app_at_start(database_url):
    with pytest.raises(ValueError, match="CHATAPI_SOURCES_LAYOUT must be one of sources-first, question-first"):
        create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "CHATAPI_SOURCES_LAYOUT": "top"})


def fallback_settings(web, first: str, second: str = "/searxng/search", **more: str) -> dict:
    """DuckDuckGo at `first` (given as CHATAPI_SEARCH_URL, as a one-backend setup would), then SearXNG at
    `second` (given in the list)."""
    return web_settings(web, first, CHATAPI_SEARCH_BACKEND=f"duckduckgo,searxng={web.url}{second}", **more)


@pytest.mark.parametrize(
    ("first", "reason"),
    [("/ratelimited", "rate limiting (202)"), ("/duckduckgo/challenge", "rate limiting (a bot challenge page)")],
)
def test_a_rate_limited_search_falls_back_and_says_so(start_server, web, client, first, reason):
    base = start_server(**fallback_settings(web, first)).url
    chat_id = new_chat(base, QUESTION)
    events = read_events(internet(base, chat_id, "max_tokens=8&temperature=0"))
    kinds = [e["event"] for e in events]
    assert kinds[:4] == ["start", "search", "warning", "sources"] and kinds[-1] == "done"
    assert set(kinds[4:-1]) == {"message"}
    assert events[2]["data"] == {
        "message": f"duckduckgo is {reason}; searched with searxng instead.",
        "failed": [{"backend": "duckduckgo", "reason": reason}],
    }
    sources = events[3]["data"]["sources"]
    assert sources[0]["url"] == f"{web.url}/articles/volcano"
    done = events[-1]["data"]
    assert done["message"]["message"] and done["message"]["sources"] == sources
    assert history(base, chat_id)[-1]["sources"] == sources
    # A fallback that found sources is not research that failed.
    assert "chatapi_research_failures_total{" not in requests.get(f"{base}/metrics", timeout=10).text


def test_every_backend_failing_is_listed_and_the_answer_comes_without_sources(start_server, web, client):
    base = start_server(**fallback_settings(web, "/ratelimited", "/broken")).url
    chat_id = new_chat(base, QUESTION)
    events = read_events(internet(base, chat_id, "max_tokens=8&temperature=0"))
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["start", "search", "warning"] and "sources" not in kinds
    assert events[2]["data"] == {
        "message": "Web search failed: duckduckgo is rate limiting (202); searxng answered 500. "
        "Answering without web sources.",
        "failed": [
            {"backend": "duckduckgo", "reason": "rate limiting (202)"},
            {"backend": "searxng", "reason": "answered 500"},
        ],
    }
    done = events[-1]
    assert done["event"] == "done" and done["data"]["message"]["message"]
    assert done["data"]["message"]["sources"] is None


def test_a_hanging_backend_leaves_time_for_the_next(start_server, web, client):
    """The first backend drips its answer for a minute; of the 6 s research deadline it gets a third, so
    SearXNG answers and its pages are read in the time left."""
    base = start_server(**fallback_settings(web, "/articles/slow", CHATAPI_RESEARCH_TIMEOUT="6")).url
    chat_id = new_chat(base, QUESTION)
    asked = time.monotonic()
    events = read_events(internet(base, chat_id, "max_tokens=8&temperature=0"))
    kinds = [e["event"] for e in events]
    assert kinds[:4] == ["start", "search", "warning", "sources"]
    assert events[2]["data"]["failed"] == [{"backend": "duckduckgo", "reason": "took too long"}]
    assert events[3]["data"]["sources"][0]["url"] == f"{web.url}/articles/volcano"
    timings = events[-1]["data"]["timings"]
    assert 1_900 <= timings["search_ms"] < 4_000  # the first backend's share, then SearXNG's quick answer
    assert timings["search_ms"] + timings["fetch_ms"] < 6_500  # all within the research deadline
    assert time.monotonic() - asked < 60


def test_a_fresh_server_reads_its_first_pages_together(start_server, web, client):
    """SearXNG answers in JSON, so the pages' extraction is the first HTML work of the server: once, only one
    page was read and the others waited for a lock until the slow page's 30 s were up."""
    base = start_server(**web_settings(web, "/searxng/search", CHATAPI_SEARCH_BACKEND="searxng")).url
    events = read_events(internet(base, new_chat(base, QUESTION), "max_tokens=8&temperature=0"))
    sources = next(e["data"]["sources"] for e in events if e["event"] == "sources")
    assert {f"{web.url}/articles/volcano", f"{web.url}/articles/filler-one"} <= {s["url"] for s in sources}
    # Two pages read, then the stragglers' one more second: far below the slow page's 30 s.
    assert events[-1]["data"]["timings"]["fetch_ms"] < 10_000


def test_an_unknown_search_backend_stops_the_server_at_start(database_url, tmp_path):
    server = Server(database_url, tmp_path / "gunicorn.log", CHATAPI_SEARCH_BACKEND="duckduckgo,bing")
    assert "CHATAPI_SEARCH_BACKEND='duckduckgo,bing': unknown search backend 'bing'" in server.refusal()


def test_the_sources_take_at_most_their_room(start_server, web, client):
    """CHATAPI_SOURCES_TOKENS caps the tokens the sources add to the prompt, however much the window has free."""
    base = start_server(**web_settings(web, CHATAPI_SOURCES_TOKENS="256")).url
    local = read_events(f"{base}/conversations/inference/{new_chat(base, QUESTION)}?max_tokens=1&temperature=0")
    sourced = read_events(internet(base, new_chat(base, QUESTION), "max_tokens=1&temperature=0"))
    added = sourced[-1]["data"]["usage"]["prompt_tokens"] - local[-1]["data"]["usage"]["prompt_tokens"]
    assert sourced[-1]["data"]["message"]["sources"]
    assert 100 < added <= 256
