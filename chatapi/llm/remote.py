"""The remote backend: replies streamed from an OpenAI-compatible server's /chat/completions (vLLM, llama.cpp's
server, llama-cpp-python's, Ollama), one greenlet per reply, instead of a model in this process; a raw prompt
(/v1/completions) from its /completions.

The server applies its own chat template: the prompt goes as chat messages, and a reply's token counts are the ones
the server reports (`stream_options.include_usage`), or None when it reports none. The history is trimmed here to
the model's window, counted with the server's tokenizer where it has a route for it.
"""

import itertools
import json
import logging
import re
import threading
import time
from collections import deque
from urllib.parse import urlsplit, urlunsplit

import gevent
import requests

from .engine import Result
from .prompt import ChatPrompt, ContextLengthExceeded, Message, TextPrompt, chat_messages
from .remote_fit import Tokenizer, fit_history, number
from .remote_models import UpstreamError, UpstreamModels
from .reply import OnEnd, OnFailure, Reply
from .tool_calls import MalformedToolCall, UpstreamToolCalls

HEALTH_SECONDS = 5  # /health waits this long for the server at most
NO_USAGE = "the model server reported no token counts"
STOPPED_USAGE = "stopped before the model server reported its token counts"
FINISH_REASONS = {"stop": "stop", "length": "length"}  # anything else (content_filter, ...) ends it too
log = logging.getLogger(__name__)


class RemoteBackend:
    """An OpenAI-compatible server at `settings.llm_url`. The service hands it prepared replies (`generate`);
    each streams in a greenlet of its own, which publishes the text and reports the reply's end (`on_end`) or
    why it failed (`on_failure`). Stopping a reply closes its request to the server.

    Its models are the server's, as `models` (UpstreamModels) knows them: their list, windows and chat templates.
    Token counts are the server's where it says them (`Tokenizer`), and a chat's history is trimmed to fit as the
    local PromptBuilder trims it (`fit_history`)."""

    name = "openai"

    def __init__(self, settings, on_end: OnEnd, on_failure: OnFailure):
        self.settings = settings
        self.on_end = on_end
        self.on_failure = on_failure
        self.on_ready = None  # the queue's; replies can always start here, so it is never called
        self.url = settings.llm_url.rstrip("/")
        self.root = self.url.removesuffix("/v1")  # where llama.cpp's and vLLM's own routes (/tokenize, /props) are
        self.shown_url = without_credentials(self.url)  # the URL as messages and /health show it
        self.headers = {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key else {}
        self.status = "ok"  # replies are taken at once: a server that fails one ends it with an error event
        self.error: str | None = None
        self.session = requests.Session()  # keeps connections to the server open between replies
        self.hub_thread = threading.get_ident()  # the thread of the server's event loop, which makes the backend
        self.streaming: dict[Reply, gevent.Greenlet] = {}  # the greenlets reading a response, to close it
        # When the server last sent something (a reply's data, its model list): /health takes that as an answer.
        self.heard_at: float | None = None
        self.silent_until = 0.0  # the server did not answer a side request: none is sent to it until then
        self.models = UpstreamModels(self)
        self.tokenizer = Tokenizer(self)

    def load(self) -> None:
        """Nothing to load: the server holds the models."""

    def readiness(self, model_id: str | None) -> str:
        """Always "ok": the server loads its models as it sees fit, and a reply it cannot serve ends with its
        error."""
        return "ok"

    def forget_model(self, model_id: str) -> None:
        """Nothing to unload: the server's models are its own (there is no catalog here to remove one from)."""

    def failure(self, problem: str, said: str = "", public: str | None = None) -> UpstreamError:
        """UpstreamError: "the model server at URL <problem><said>", and without the URL and `said` (the server's or
        the system's words) for clients, unless `public` is given."""
        return UpstreamError(
            f"the model server at {self.shown_url} {problem}{said}", public or f"the model server {problem}"
        )

    # Models: what UpstreamModels knows of them

    def resolve(self, name: str | None) -> str | None:
        """The id of the model a reply is for (UpstreamModels.resolve)."""
        return self.models.resolve(name)

    def listing(self) -> list[dict]:
        """The server's models in the API's representation (UpstreamModels.listing)."""
        return self.models.listing()

    def context_window(self, model_id: str | None) -> int:
        """The model's context window in tokens (UpstreamModels.context_window)."""
        return self.models.context_window(model_id)

    def read_models(self, timeout: float) -> list[dict]:
        """The server's model list (GET /models), asked now: the models with an id; UpstreamError when it cannot
        be read or is empty (UpstreamModels.fetch remembers it)."""
        try:
            response = self.session.get(f"{self.url}/models", headers=self.headers, timeout=timeout)
        except requests.RequestException as exc:
            self.silent_until = time.monotonic() + HEALTH_SECONDS  # see side_request
            if isinstance(exc, requests.Timeout):
                raise self.failure(f"did not answer within {timeout:g} s") from None
            raise self.failure("cannot be reached", f": {reason(exc)}") from None
        if response.status_code != 200:
            raise self.failure(
                f"answered {answer(response)} to GET /models",
                public=f"the model server answered {response.status_code} to GET /models",
            )
        try:
            models = [m for m in response.json()["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (ValueError, KeyError, TypeError):
            raise self.failure("sent no model list from GET /models") from None
        if not models:
            raise self.failure("lists no model")
        self.heard_at = time.monotonic()
        return models

    def describe(self) -> dict:
        """`ok` with its default model when the server sent a reply's data or its model list in the last
        HEALTH_SECONDS; else it is asked now: `ok`, or `unavailable` and why. (llama-cpp-python's server answers
        GET /models only once the reply it is making is over: asked while streaming, it would seem down.)"""
        described = {"status": "ok", "backend": self.name, "url": self.shown_url}
        recent = self.heard_at is not None and time.monotonic() - self.heard_at < HEALTH_SECONDS
        timeout = min(HEALTH_SECONDS, self.settings.llm_timeout)
        try:
            models = self.models.listed if recent and self.models.listed else self.models.fetch(timeout)
            name = self.models.default(models)
            if not any(m["id"] == name for m in models):
                raise self.failure("does not list the model", f" {name!r}")
        except UpstreamError as exc:
            return {**described, "status": "unavailable", "reason": str(exc), "n_ctx": self.models.fallback_window}
        return {**described, "name": name, "n_ctx": self.models.context_window(name)}

    # Requests besides a reply's, and token counts

    def side_request(self, method: str, path: str, **kwargs) -> tuple[int | None, dict | list | None]:
        """A request besides a reply's, at the server's root (or its /v1, for paths that start so): its status and
        JSON answer (None unless 200), or (None, None) when it did not answer. A server that does not answer is
        left alone for HEALTH_SECONDS: what would be asked of it is estimated meanwhile, and its replies fail on
        their own."""
        if time.monotonic() < self.silent_until:
            return None, None
        url = f"{self.url}{path[3:]}" if path.startswith("/v1/") else f"{self.root}{path}"
        # The session's connections belong to the hub's thread; internet mode sizes its sources in another
        # (chatapi/web/research.py), whose requests take connections of their own.
        http = self.session if threading.get_ident() == self.hub_thread else requests
        try:
            response = http.request(method, url, headers=self.headers, timeout=self.settings.llm_timeout, **kwargs)
        except requests.RequestException as exc:
            log.warning("the model server at %s did not answer %s %s: %s", self.shown_url, method, path, reason(exc))
            self.silent_until = time.monotonic() + HEALTH_SECONDS
            return None, None
        try:
            return response.status_code, response.json() if response.status_code == 200 else None
        except ValueError:
            return response.status_code, None

    def count_tokens(self, model_id: str | None, texts: list[str]) -> list[int]:
        """Token counts of texts in the model's tokenizer: the server's, else a conservative estimate."""
        return [self.tokenizer.count(model_id, text) for text in texts]

    # Prompts

    def build(
        self, model_id: str | None, system_prompt: str, history: list[Message], budget: int, cut=True, tools=()
    ) -> ChatPrompt:
        """The chat messages for the next Assistant turn within `budget` tokens, as the local PromptBuilder keeps
        them (see fit_history); `truncated` says how many messages were left out or cut. The tools go in the
        request's body as the client gave them (ReplyRequest.upstream), not here."""
        template = self.models.template(model_id)

        def count(text: str) -> int:
            return self.tokenizer.count(model_id, text)

        system, kept, truncated = fit_history(system_prompt, history, budget, cut, count, template)
        prompt = chat_messages(system, kept)
        prompt.truncated = truncated
        return prompt

    def build_raw(self, model_id: str | None, text: str, budget: int) -> TextPrompt:
        """A raw prompt, sent as it is to the server's /completions; ContextLengthExceeded beyond `budget` tokens
        (counted by the server's tokenizer and a BOS, else estimated)."""
        needed = self.tokenizer.count(model_id, text) + 1
        if needed > budget:
            raise ContextLengthExceeded(needed, budget)
        return TextPrompt(text, [])

    def with_sources(self, model_id: str | None, prompt: ChatPrompt, sources: str, layout: str) -> ChatPrompt:
        """The prompt with internet mode's web sources placed by `layout`; the same messages, built with room
        for them."""
        with_them = chat_messages(prompt.system_prompt, prompt.history, sources, layout)
        with_them.stop = prompt.stop
        with_them.truncated = prompt.truncated
        return with_them

    def read_ahead(self, reply: Reply, prompt: ChatPrompt, busy: bool) -> None:
        """Nothing to read ahead: the server caches prompts as it sees fit."""

    # Generating

    def admissible(self, waiting: deque, running: list) -> list[Reply]:
        """The waiting replies to start now: the oldest, up to CHATAPI_PARALLEL running (the server queues
        what it cannot run at once)."""
        return list(itertools.islice(waiting, max(0, self.settings.parallel - len(running))))

    def generate(self, reply: Reply) -> None:
        gevent.spawn(self._stream, reply)

    def keep_state(self, reply: Reply, request, text: str, job) -> None:
        """Nothing to keep: the server keeps (or not) what it read."""

    def forget_chat(self, chat_id) -> None:
        """Nothing kept here of a chat."""

    def cancel(self, reply: Reply) -> None:
        """Close the reply's request to the server now (its greenlet ends it as cancelled); a reply whose
        request has not started sees its `cancelled` flag first."""
        greenlet = self.streaming.pop(reply, None)
        if greenlet is not None:
            greenlet.kill(block=False)

    def request_body(self, model_id: str, prompt: ChatPrompt | TextPrompt, options) -> dict:
        body = {
            "model": model_id,
            **({"prompt": prompt.text} if isinstance(prompt, TextPrompt) else {"messages": prompt.messages}),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "seed": options.seed,
        }
        if prompt.stop:
            body["stop"] = prompt.stop
        return body

    def prompt_tokens(self, model_id: str, messages: list[dict]) -> int | None:
        """The prompt tokens the server counts for these chat messages, from the usage of a one-token completion;
        None when it reports none."""
        body = {"model": model_id, "messages": messages, "max_tokens": 1, "temperature": 0, "stream": False}
        _, answered = self.side_request("POST", "/v1/chat/completions", json=body)
        usage = answered.get("usage") if isinstance(answered, dict) else None
        return number((usage or {}).get("prompt_tokens"))

    def _stream(self, reply: Reply) -> None:
        """One reply's request, read to its end: its text published as it comes, then `on_end` with the
        server's usage (or `on_failure`)."""
        job = reply.job
        started = time.monotonic()
        progress = {"first_token": None, "usage": None, "finish_reason": None}
        self.streaming[reply] = gevent.getcurrent()
        try:
            if job.cancelled:
                progress["finish_reason"] = "cancelled"
            else:
                self._read(reply, progress)
        except gevent.GreenletExit:  # cancel() closed the request
            progress["finish_reason"] = "cancelled"
        except requests.Timeout:
            return self.failed(reply, 504, self.failure(f"sent nothing for {self.settings.llm_timeout:g} s"))
        except requests.RequestException as exc:
            return self.failed(reply, 502, self.failure("failed", f": {reason(exc)}"))
        except UpstreamError as exc:
            return self.failed(reply, 502, exc)
        except Exception:  # the stream must still end with an event
            log.exception("streaming from the model server failed")
            return self.on_failure(reply, 502, "the model server's answer could not be read")
        finally:
            self.streaming.pop(reply, None)
        usage = progress["usage"] or {}
        details = usage.get("prompt_tokens_details") or {}
        result = Result(
            finish_reason=progress["finish_reason"],
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cached_tokens=details.get("cached_tokens") if usage else None,
            started=started,
            first_token=progress["first_token"],
            ended=time.monotonic(),
            usage_note=None if usage else STOPPED_USAGE if progress["finish_reason"] == "cancelled" else NO_USAGE,
        )
        self.on_end(reply, result)

    def failed(self, reply: Reply, code: int, error: UpstreamError) -> None:
        """The reply ends with an error event that says what failed; the log says where and why."""
        log.error("reply %s: %s", reply.message_id, error)
        self.on_failure(reply, code, error.public)

    def reply_model(self, reply: Reply, timeout: float) -> str:
        """The model the reply is for; its default when it was resolved while the server's list could not be
        read (UpstreamError when it still cannot, or does not list CHATAPI_LLM_MODEL)."""
        if reply.model is not None:
            return reply.model
        models = self.models.current(timeout)
        name = self.models.default(models)
        if not any(m["id"] == name for m in models):
            raise self.failure("does not list the model", f" {name!r}")
        return name

    def _read(self, reply: Reply, progress: dict) -> None:
        timeout = self.settings.llm_timeout
        model_id = self.reply_model(reply, timeout)
        body = {**self.request_body(model_id, reply.job.prompt, reply.job.options), **reply.upstream}
        url = f"{self.url}{completions_path(body)}"
        calls = UpstreamToolCalls()  # its tool calls, added to the text in the one form once they are whole
        with self.session.post(url, json=body, headers=self.headers, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise self.refused(model_id, response)
            for line in response.iter_lines(chunk_size=None):
                self.heard_at = time.monotonic()
                if not line.startswith(b"data:"):
                    continue  # blank lines between events, comments (pings), other fields
                data = line[len(b"data:") :].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    error = chunk["error"]
                    self.models.learn_window(model_id, error)
                    said = error.get("message") if isinstance(error, dict) else error
                    raise self.failure("failed", f": {said}")
                progress["usage"] = chunk.get("usage") or progress["usage"]
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = choice.get("text") if "prompt" in body else delta.get("content")
                    if text:
                        progress["first_token"] = progress["first_token"] or time.monotonic()
                        reply.add_text(text)
                    if delta.get("tool_calls") is not None:
                        progress["first_token"] = progress["first_token"] or time.monotonic()
                        self.add_tool_calls(calls, delta["tool_calls"])
                    if choice.get("finish_reason"):
                        progress["finish_reason"] = FINISH_REASONS.get(choice["finish_reason"], "stop")
            if calls.calls:
                reply.add_text(self.add_tool_calls(calls, []))
        if progress["finish_reason"] is None:
            if progress["first_token"] is None:
                self.ask_why(model_id, body)
            raise self.failure("ended the stream before the reply's end")

    def add_tool_calls(self, calls: UpstreamToolCalls, deltas: list) -> str:
        """Streamed tool-call deltas added to `calls`; the calls' text once whole (with no more deltas). A malformed
        one ends the reply with an error: a client must not get a call it cannot read."""
        try:
            calls.add(deltas)
            return "" if deltas else calls.text()
        except MalformedToolCall as exc:
            public = f"the model server sent a malformed tool call: {exc}"
            raise self.failure("sent a malformed tool call", f": {exc}", public) from None

    def ask_why(self, model_id: str, body: dict) -> None:
        """A stream that ended before any text: llama-cpp-python's server ends so the stream of a prompt longer
        than the model's window, and says so (and the window) only to a request that does not stream. Asked so,
        for one token, its error is raised (and the window learned); nothing when it answers."""
        probe = {**body, "stream": False, "max_tokens": 1}
        probe.pop("stream_options")
        url = f"{self.url}{completions_path(body)}"
        # On a connection of its own: the server has just broken the stream's, which the session would reuse.
        response = requests.post(url, json=probe, headers=self.headers, timeout=self.settings.llm_timeout)
        if response.status_code != 200:
            raise self.refused(model_id, response)

    def refused(self, model_id: str, response: requests.Response) -> UpstreamError:
        """The server's error answer to a reply's request, the window it names learned."""
        try:
            self.models.learn_window(model_id, response.json().get("error"))
        except (ValueError, AttributeError):
            pass
        return self.failure(f"answered {answer(response)}", public=f"the model server answered {response.status_code}")


def completions_path(body: dict) -> str:
    """Where a reply's request goes: a chat's to /chat/completions, a raw prompt's to /completions."""
    return "/completions" if "prompt" in body else "/chat/completions"


def answer(response: requests.Response) -> str:
    """A server's error answer, shortly: its status and its message."""
    try:
        body = response.json()
        error = body.get("error") or body.get("detail") or body
        said = error.get("message", error) if isinstance(error, dict) else error
    except ValueError:
        said = response.text
    return f"{response.status_code}: {str(said).strip()[:300]}"


def without_credentials(url: str) -> str:
    """The URL without a user name and password in it (http://user:secret@host/v1 -> http://host/v1)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def reason(exc: requests.RequestException) -> str:
    """Why a request failed, shortly: the system's words when there are some ("Connection refused")."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found.group(1).strip() if found else text[:300]
