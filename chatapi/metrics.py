"""GET /metrics: the server's requests and replies in Prometheus text format (prometheus_client).

Each app has a registry of its own (the tests make several apps in one process). Every label takes a bounded
set of values, so that no request can add series without end: requests are counted by their URL rule, never
the raw path (a path no rule matches is "unmatched"), and by their method when it is a standard one, else
"other" (gunicorn passes any token as a method, also to a 401 or 429 before any route runs); tokens by person are
labelled with names, which are few, up to MAX_PEOPLE_LABELS of them. A reply reports through
the `on_event` callback the app gives each reply it starts (chatapi/replies.py); the queue's gauges are
read from the reply service at each scrape.
"""

import time
from functools import partial

from flask import Flask, Response, current_app, g, request, request_started
from flask_smorest import abort
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from .llm.queue import ReplyService
from .llm.reply import Reply, ReplyEvents
from .openapi import Blueprint
from .people import MAX_PEOPLE, Person

SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKENS_PER_SECOND = (1, 2, 5, 10, 20, 50, 100, 200, 500)
# People are few (a household, a team; a server takes people.MAX_PEOPLE), so a label of their own is bounded; past
# this many names (people deleted and made again under new names) the rest are counted together as OTHER_PEOPLE,
# which no name can be (names start with [a-z0-9]).
MAX_PEOPLE_LABELS = MAX_PEOPLE
OTHER_PEOPLE = "_other"
RESEARCH_PHASES = ("search", "fetch", "rank")  # in order; the timings name each `<phase>_ms`
HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))

# No `_created` series beside each counter and histogram: they double what Prometheus stores, for nothing.
disable_created_metrics()

bp = Blueprint("metrics", __name__, description="Metrics")


@bp.route("/metrics", methods=["GET"])
@bp.doc(
    responses={
        "200": {
            "description": "Prometheus text format (version 0.0.4).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    }
)
def metrics():
    """The server's requests and replies, for Prometheus to scrape. Once accounts are on, admins only: the tokens
    are counted by person."""
    person = g.get("person")
    if person is not None and not person.admin:
        abort(403, message="only an admin reads the metrics: they count each person's tokens")
    registry = current_app.extensions["metrics"].registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)


class Metrics:
    """The app's registry and its metrics."""

    def __init__(self, replies: ReplyService):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "chatapi_http_requests",
            "HTTP requests by URL rule, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "chatapi_http_request_duration_seconds",
            "Time until a response's headers (a stream's body is not included), by URL rule and method",
            ["route", "method"],
            registry=r,
        )
        self.replies_started = Counter("chatapi_replies_started", "Replies started", ["mode"], registry=r)
        self.replies_finished = Counter(
            "chatapi_replies_finished",
            "Replies finished, by finish reason (stop, length, cancelled, error)",
            ["mode", "finish_reason"],
            registry=r,
        )
        self.completion_tokens = Counter("chatapi_reply_completion_tokens", "Tokens generated", ["mode"], registry=r)
        self.prompt_tokens = Counter("chatapi_reply_prompt_tokens", "Prompt tokens of replies", ["mode"], registry=r)
        self.cached_tokens = Counter(
            "chatapi_reply_cached_prompt_tokens",
            "Prompt tokens found in the KV cache, not read again",
            ["mode"],
            registry=r,
        )
        self.queue_time = Histogram(
            "chatapi_reply_queue_seconds",
            "Time from a reply's request to the model taking it up",
            ["mode"],
            buckets=SECONDS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "chatapi_reply_time_to_first_token_seconds",
            "Time from a reply's request to its first token",
            ["mode"],
            buckets=SECONDS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "chatapi_reply_tokens_per_second",
            "Generation speed of a reply after its first token",
            ["mode"],
            buckets=TOKENS_PER_SECOND,
            registry=r,
        )
        self.research_time = Histogram(
            "chatapi_research_phase_seconds",
            "Internet mode: time of each research phase (search, fetch, rank)",
            ["phase"],
            buckets=SECONDS,
            registry=r,
        )
        self.research_failures = Counter(
            "chatapi_research_failures",
            "Internet mode: research that gave no sources, by the phase it ended in (search, fetch, rank)",
            ["phase"],
            registry=r,
        )
        self.person_tokens = Counter(
            "chatapi_person_tokens",
            f"Tokens of the replies each person asked for, by kind (prompt, completion); past {MAX_PEOPLE_LABELS} "
            f"people the rest are counted as {OTHER_PEOPLE}",
            ["person", "kind"],
            registry=r,
        )
        self.people_labelled: set[str] = set()
        self.model_loads = Histogram(
            "chatapi_model_load_seconds",
            "Time to load a model into memory, by model (at most the catalog's 200 ids)",
            ["model"],
            buckets=(0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.model_unloads = Counter(
            "chatapi_model_unloads", "Models unloaded to make room for another, or removed", ["model"], registry=r
        )
        replies.on_model_change = self.model_changed
        r.register(ReplyQueueCollector(replies))

    def model_changed(self, model_id: str, status: str, load_seconds: float | None) -> None:
        """A model loaded (ok, its load time), failed to load, or was unloaded."""
        if status == "ok" and load_seconds is not None:
            self.model_loads.labels(model_id).observe(load_seconds)
        elif status == "unloaded":
            self.model_unloads.labels(model_id).inc()

    def count_request(self, response: Response) -> None:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        method = request.method if request.method in HTTP_METHODS else "other"
        # The status is the app's own (a client cannot choose it), so it takes few values.
        self.requests.labels(route, method, str(response.status_code)).inc()
        started = g.get("metrics_started")
        if started is not None:
            self.latency.labels(route, method).observe(time.perf_counter() - started)

    def reply_event(self, reply: Reply, event: str | None, data: dict, person: str | None = None) -> None:
        """Called for every event of a reply this app started for `person` (a name, or None while accounts are
        off), in the server's hub: never blocking."""
        mode = reply.mode
        if event == "start":
            self.replies_started.labels(mode).inc()
        elif event == "error":
            self.replies_finished.labels(mode, "error").inc()
        elif event == "done":
            self.replies_finished.labels(mode, data["finish_reason"]).inc()
            self.reply_done(mode, data["usage"], data["timings"], wrote=data["message"] is not None)
            if person is not None:
                self.count_person_tokens(person, data["usage"])

    def count_person_tokens(self, person: str, usage: dict) -> None:
        if person not in self.people_labelled:
            if len(self.people_labelled) >= MAX_PEOPLE_LABELS:
                person = OTHER_PEOPLE
            else:
                self.people_labelled.add(person)
        for kind in ("prompt", "completion"):
            if usage[f"{kind}_tokens"] is not None:  # not reported by a remote model server: not counted
                self.person_tokens.labels(person, kind).inc(usage[f"{kind}_tokens"])

    def reply_done(self, mode: str, usage: dict, timings: dict, wrote: bool) -> None:
        # Counts a remote model server did not report (None) are not counted.
        for counter, name in (
            (self.completion_tokens, "completion_tokens"),
            (self.prompt_tokens, "prompt_tokens"),
            (self.cached_tokens, "cached_tokens"),
        ):
            if usage[name] is not None:
                counter.labels(mode).inc(usage[name])
        self.queue_time.labels(mode).observe(timings["queue_ms"] / 1000)
        generated = usage["completion_tokens"] if usage["completion_tokens"] is not None else wrote
        if generated:  # a reply stopped before its first token has no such time
            self.time_to_first_token.labels(mode).observe(timings["ttft_ms"] / 1000)
        if timings["tokens_per_second"] is not None:
            self.tokens_per_second.labels(mode).observe(timings["tokens_per_second"])
        for phase in RESEARCH_PHASES:
            if f"{phase}_ms" in timings:
                self.research_time.labels(phase).observe(timings[f"{phase}_ms"] / 1000)


def last_phase(timings: dict) -> str:
    """The research phase that ran last: the one where research that found nothing stopped."""
    return [phase for phase in RESEARCH_PHASES if f"{phase}_ms" in timings][-1]


class ReplyQueueCollector:
    """Gauges read from the reply service when scraped: replies waiting, running, and whether the model is ready."""

    def __init__(self, replies: ReplyService):
        self.replies = replies

    def collect(self):
        replies = self.replies
        yield GaugeMetricFamily(
            "chatapi_replies_waiting",
            "Replies waiting for the model: queued, or being prepared (internet mode: researching)",
            value=replies.preparing + len(replies.waiting),
        )
        yield GaugeMetricFamily("chatapi_replies_running", "Replies being generated", value=len(replies.running))
        yield GaugeMetricFamily(
            "chatapi_model_ready", "1 when the default model can serve", value=int(replies.status == "ok")
        )
        loaded = GaugeMetricFamily(
            "chatapi_model_loaded",
            "1 for each model in memory and serving, 0 while it loads or unloads",
            labels=["model"],
        )
        for model in replies.loaded_models():
            loaded.add_metric([model["id"]], int(model["status"] == "ok"))
        yield loaded
        kv = replies.kv_files()
        if kv is not None:
            states = CounterMetricFamily(
                "chatapi_kv_states",
                "Chats' KV-cache states on disk: written, read (restored), stale (an edited history), unusable "
                "(damaged, other settings), failed (a write), dropped (too many waiting), evicted (past the budget)",
                labels=["event"],
            )
            for event, count in kv.counts.items():
                states.add_metric([event], count)
            yield states
            yield GaugeMetricFamily("chatapi_kv_disk_bytes", "What chats' KV-cache states take on disk", kv.disk_bytes)


def start_timer(_app: Flask, **_extra) -> None:
    """Runs before every before_request hook, so that a request the auth hook refuses is timed too."""
    g.metrics_started = time.perf_counter()


def count_request(response: Response) -> Response:
    current_app.extensions["metrics"].count_request(response)
    return response


def count_research_failure(app: Flask, timings: dict) -> None:
    """Count internet mode's research that gave no sources, by the phase it ended in (chatapi/replies.py)."""
    app.extensions["metrics"].research_failures.labels(last_phase(timings)).inc()


def reply_events(person: Person | None = None) -> ReplyEvents:
    """The callback through which a reply this app starts reports its events; `person` (a people.Person, None while
    accounts are off) is who asked for it."""
    counted = current_app.extensions["metrics"].reply_event
    return counted if person is None else partial(counted, person=person.name)


def init_app(app: Flask) -> None:
    app.extensions["metrics"] = Metrics(app.extensions["replies"])
    request_started.connect(start_timer, app)
    app.after_request(count_request)
