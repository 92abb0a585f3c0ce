"""GET /metrics: the real server and model, scraped before and after, parsed with prometheus_client."""

import pytest
import requests

from chatapi import create_app
from tests.support.chats import ENDLESS, GREEDY, QUESTION, infer, new_chat
from tests.support.metrics import moved, samples_of, scrape, value
from tests.support.sse import EventStream, read_events, read_events_acting
from tests.support.web import web_settings


def test_a_reply_moves_the_reply_metrics_by_its_usage_and_timings(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, QUESTION)
    before = scrape(base)
    done = read_events(infer(base, chat_id, f"max_tokens=8&{GREEDY}"))[-1]["data"]
    after = scrape(base)
    usage, timings = done["usage"], done["timings"]
    local = {"mode": "local"}

    assert moved(before, after, "chatapi_replies_started_total", **local) == 1
    assert moved(before, after, "chatapi_replies_finished_total", **local, finish_reason=done["finish_reason"]) == 1
    assert moved(before, after, "chatapi_reply_completion_tokens_total", **local) == usage["completion_tokens"] > 0
    assert moved(before, after, "chatapi_reply_prompt_tokens_total", **local) == usage["prompt_tokens"]
    assert moved(before, after, "chatapi_reply_cached_prompt_tokens_total", **local) == usage["cached_tokens"]
    for histogram, seconds in [
        ("chatapi_reply_time_to_first_token_seconds", timings["ttft_ms"] / 1000),
        ("chatapi_reply_queue_seconds", timings["queue_ms"] / 1000),
        ("chatapi_reply_tokens_per_second", timings["tokens_per_second"]),
    ]:
        assert moved(before, after, f"{histogram}_count", **local) == 1
        assert moved(before, after, f"{histogram}_sum", **local) == pytest.approx(seconds, abs=0.001)
    # The gauges are there, and the model is idle again.
    assert value(after, "chatapi_replies_running") == 0 and value(after, "chatapi_replies_waiting") == 0
    assert value(after, "chatapi_model_ready") == 1


def test_requests_are_counted_by_route_and_status(inference_server, client):
    base = inference_server
    before = scrape(base)
    chat_id = requests.post(f"{base}/chats/create", json={"name": "counted"}, timeout=10).json()["id"]
    assert requests.get(f"{base}/chats/{chat_id}", timeout=10).status_code == 200
    assert requests.get(f"{base}/chats/{chat_id}", timeout=10).status_code == 200
    assert requests.get(f"{base}/chats/not-a-chat", timeout=10).status_code == 404
    assert requests.post(f"{base}/chats/create", json={}, timeout=10).status_code == 422
    assert requests.get(f"{base}/no/such/route/{chat_id}", timeout=10).status_code == 404
    after = scrape(base)

    def counted(route: str, method: str, status: str) -> float:
        return moved(before, after, "chatapi_http_requests_total", route=route, method=method, status=status)

    assert counted("/chats/create", "POST", "201") == 1
    assert counted("/chats/create", "POST", "422") == 1
    assert counted("/chats/<chat_id>", "GET", "200") == 2
    assert counted("/chats/<chat_id>", "GET", "404") == 1
    assert counted("unmatched", "GET", "404") == 1  # by rule, never by raw path: an id makes no series
    assert counted("/metrics", "GET", "200") == 1  # the first scrape (each is counted once it is sent)
    assert not any(chat_id in str(labels) for _, labels in after)
    latency = "chatapi_http_request_duration_seconds"
    assert moved(before, after, f"{latency}_count", route="/chats/<chat_id>", method="GET") == 3
    assert moved(before, after, f"{latency}_bucket", route="/chats/<chat_id>", method="GET", le="+Inf") == 3
    assert 0 < moved(before, after, f"{latency}_sum", route="/chats/<chat_id>", method="GET") < 3


def test_made_up_methods_and_paths_add_no_series(inference_server, client):
    """gunicorn passes any token as a method: each would add series for good were it a label of its own."""
    base = inference_server

    def made_up(n: int) -> None:  # a method of its own, on a route and on a path of its own
        for url in (f"{base}/chats/", f"{base}/made/up/{n}"):
            assert requests.request(f"MADEUP{n}", url, timeout=10).status_code in (404, 405)

    made_up(0)
    scrape(base)  # the series of the first made-up method and of a scrape are there from now on
    before = scrape(base)
    for n in range(1, 41):
        made_up(n)
    after = scrape(base)

    assert after.keys() == before.keys()
    other = {"route": "unmatched", "method": "other"}
    for status in ("404", "405"):
        assert moved(before, after, "chatapi_http_requests_total", **other, status=status) == 40
    assert moved(before, after, "chatapi_http_request_duration_seconds_count", **other) == 80


def test_the_gauges_show_replies_running_and_waiting(one_at_a_time_server, client):
    base = one_at_a_time_server
    running_chat = new_chat(base, *ENDLESS)
    running = iter(EventStream(infer(base, running_chat, f"max_tokens=2000&{GREEDY}")))
    assert [next(running)["event"], next(running)["event"]] == ["start", "message"]
    waiting = [iter(EventStream(infer(base, new_chat(base, QUESTION)))) for _ in range(2)]
    for stream in waiting:
        assert [next(stream)["event"], next(stream)["event"]] == ["start", "queued"]
    during = scrape(base)
    assert value(during, "chatapi_replies_running") == 1 and value(during, "chatapi_replies_waiting") == 2

    requests.post(f"{base}/conversations/stop/{running_chat}", timeout=10)
    assert list(running)[-1]["data"]["finish_reason"] == "cancelled"
    assert all(list(stream)[-1]["event"] == "done" for stream in waiting)
    after = scrape(base)
    assert value(after, "chatapi_replies_running") == 0 and value(after, "chatapi_replies_waiting") == 0
    assert moved(during, after, "chatapi_replies_finished_total", mode="local", finish_reason="cancelled") == 1


def test_a_reply_that_ends_in_an_error_is_counted_as_one(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, *ENDLESS)
    before = scrape(base)

    def delete():
        assert requests.delete(f"{base}/chats/delete/{chat_id}", timeout=10).status_code == 200

    events = read_events_acting(infer(base, chat_id, f"max_tokens=400&{GREEDY}"), 3, delete)
    assert events[-1]["event"] == "error"
    after = scrape(base)
    assert moved(before, after, "chatapi_replies_finished_total", mode="local", finish_reason="error") == 1
    assert moved(before, after, "chatapi_replies_started_total", mode="local") == 1
    # An error has no usage: no tokens are counted for it.
    assert moved(before, after, "chatapi_reply_completion_tokens_total", mode="local") == 0


def internet(base: str, chat_id: str) -> str:
    return f"{base}/conversations/inference_internet/{chat_id}?max_tokens=8&{GREEDY}"


def test_internet_mode_phase_timings(start_server, web, client):
    base = start_server(**web_settings(web)).url
    done = read_events(internet(base, new_chat(base, "How often does the Zorblax volcano erupt?")))[-1]["data"]
    samples = scrape(base)
    assert value(samples, "chatapi_replies_started_total", mode="internet") == 1
    for phase in ("search", "fetch", "rank"):
        assert value(samples, "chatapi_research_phase_seconds_count", phase=phase) == 1
        seconds = done["timings"][f"{phase}_ms"] / 1000
        assert value(samples, "chatapi_research_phase_seconds_sum", phase=phase) == pytest.approx(seconds, abs=0.001)
        assert value(samples, "chatapi_research_failures_total", phase=phase) == 0


def test_internet_mode_failures_by_phase(start_server, web, client):
    base = start_server(**web_settings(web, "/broken")).url
    events = read_events(internet(base, new_chat(base, "How often does the Zorblax volcano erupt?")))
    assert "warning" in [e["event"] for e in events]
    samples = scrape(base)
    assert value(samples, "chatapi_research_failures_total", phase="search") == 1
    assert value(samples, "chatapi_research_phase_seconds_count", phase="search") == 1
    assert value(samples, "chatapi_research_phase_seconds_count", phase="fetch") == 0
    finish_reason = events[-1]["data"]["finish_reason"]
    assert value(samples, "chatapi_replies_finished_total", mode="internet", finish_reason=finish_reason) == 1


def test_each_app_counts_in_its_own_registry(database_url, app):
    apps = [create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url}) for _ in range(2)]
    assert apps[0].test_client().get("/chats/").status_code == 200

    def chat_lists(one) -> float:
        samples = samples_of(one.test_client().get("/metrics").text)
        return value(samples, "chatapi_http_requests_total", route="/chats/", method="GET", status="200")

    assert [chat_lists(one) for one in apps] == [1, 0]


def test_the_api_document_has_the_route(client):
    responses = client.get("/openapi.json").json["paths"]["/metrics"]["get"]["responses"]
    assert list(responses["200"]["content"]) == ["text/plain"]
