"""The remote backend: replies streamed from an OpenAI-compatible server's /chat/completions (vLLM, llama.cpp's
server, llama-cpp-python's, Ollama), one greenlet per reply, instead of a model in this process.

The server applies its own chat template: the prompt goes as chat messages, and a reply's token counts are the ones
the server reports (`stream_options.include_usage`), or None when it reports none. The history is trimmed here to
the model's window, counted with the server's tokenizer where it has a route for it.
"""

import hashlib
import itertools
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import gevent
import requests

from .catalog import UnknownModel
from .engine import Result
from .prompt import ELLIPSIS, ChatPrompt, ContextLengthExceeded, Message, chat_messages
from .reply import OnEnd, OnFailure, Reply

HEALTH_SECONDS = 5  # /health waits this long for the server at most
MODELS_SECONDS = 30  # the server's model list is read again when it is older than this
MAX_MODELS = 1000  # models of the list kept (and listed) at most
COUNTS_KEPT = 4096  # token counts of texts remembered at most
BYTES_PER_TOKEN = 2.5  # of words' UTF-8, where the server cannot count a text's tokens (see estimate)
SLACK = 2  # tokens more per message than counted alone (see fit_history)
MORE = " …"  # ends a system prompt cut short
WORD = re.compile(r"[^\W\d_]+")  # a run of letters
LONE_SPACE = re.compile(r"\s(?![^\W\d_])")  # a space, tab or line break not followed by a letter
WINDOW_FIELDS = ("max_model_len", "context_length", "context_window", "n_ctx")
NO_USAGE = "the model server reported no token counts"
STOPPED_USAGE = "stopped before the model server reported its token counts"
FINISH_REASONS = {"stop": "stop", "length": "length"}  # anything else (content_filter, ...) ends it too
log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """The model server cannot serve a reply. The message says why, with the server's address and words (for the
    log and /health's details); `public` says it without them (for a reply's error event and JSON errors)."""

    def __init__(self, message: str, public: str):
        super().__init__(message)
        self.public = public


class RemoteBackend:
    """An OpenAI-compatible server at `settings.llm_url`. The service hands it prepared replies (`generate`);
    each streams in a greenlet of its own, which publishes the text and reports the reply's end (`on_end`) or
    why it failed (`on_failure`). Stopping a reply closes its request to the server.

    Its models are the server's (GET /models, asked again every MODELS_SECONDS); each one's context window and
    token counts are learned from the server where it says them (see `context_window`, `Tokenizer`), and a
    chat's history is trimmed to fit as the local PromptBuilder trims it (`fit_history`)."""

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
        self.models: list[dict] | None = None  # the server's list, as it sent it (at most MAX_MODELS)
        self.models_at = 0.0  # when it was read
        self.refreshing: gevent.Greenlet | None = None
        # Per listed model: its window as the server says it, None when it says none (asked again with the list).
        self.windows: dict[str, int | None] = {}
        self.templates: dict[str, Template] = {}  # per listed model: what its chat template adds, measured
        self.tokenizer = Tokenizer(self)
        self.silent_until = 0.0  # the server did not answer a side request: none is sent to it until then

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

    # Models

    def fetch_models(self, timeout: float) -> list[dict]:
        """The server's model list (GET /models), asked now and remembered; UpstreamError when it cannot be read
        or is empty."""
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
        self.heard_at = self.models_at = time.monotonic()
        self.models = models[:MAX_MODELS]
        listed = {m["id"] for m in self.models}
        # What was learned of models no longer listed goes; a window the server did not say is asked again.
        self.windows = {i: window for i, window in self.windows.items() if i in listed and window is not None}
        self.templates = {i: template for i, template in self.templates.items() if i in listed}
        return self.models

    def listed_models(self, timeout: float) -> list[dict]:
        """The server's model list: read once, then answered from memory while a read of it MODELS_SECONDS old is
        renewed in the background (llama-cpp-python's server answers GET /models only between replies, and a
        request that resolves a model must not wait for that)."""
        if self.models is None:
            return self.fetch_models(timeout)
        if time.monotonic() - self.models_at > MODELS_SECONDS and not self.refreshing:
            self.refreshing = gevent.spawn(self._refresh_models, timeout)
        return self.models

    def _refresh_models(self, timeout: float) -> None:
        try:
            self.fetch_models(timeout)
        except UpstreamError as exc:
            log.warning("the model list was not renewed: %s", exc)  # the last one stays
        finally:
            self.refreshing = None

    def card(self, model_id: str | None) -> dict | None:
        """The model as the server last listed it, if it did (nothing is asked)."""
        return next((m for m in self.models or () if m["id"] == model_id), None)

    def default_model(self, models: list[dict]) -> str:
        """CHATAPI_LLM_MODEL, else the first model the server lists."""
        return self.settings.llm_model or models[0]["id"]

    def resolve(self, name: str | None) -> str | None:
        """The id of the model a reply is for: `name`, or None for the default (CHATAPI_LLM_MODEL, else the first
        the server lists). UnknownModel for a name the server does not list. When the list cannot be read the
        name is taken as it is (and None stays None unless CHATAPI_LLM_MODEL is set): the reply's request then
        fails with the server's error, as it would anyway."""
        try:
            models = self.listed_models(self.settings.llm_timeout)
        except UpstreamError:
            return name or self.settings.llm_model
        if name is None:
            return self.default_model(models)
        if not any(m["id"] == name for m in models):
            raise UnknownModel(name)
        return name

    def listing(self) -> list[dict]:
        """The server's models in the API's representation (catalog.ModelEntry.public's), what it does not say
        null; UpstreamError when it cannot say which it serves."""
        models = self.listed_models(self.settings.llm_timeout)
        default = self.default_model(models)
        return [self.public(model, model["id"] == default) for model in models]

    def public(self, model: dict, default: bool) -> dict:
        meta = model.get("meta") if isinstance(model.get("meta"), dict) else {}
        status = model.get("status")
        status = status.get("value") if isinstance(status, dict) else status  # llama-server's router mode
        created = model.get("created")
        return {
            "id": model["id"],
            "size": number(meta.get("size")),  # llama-server's
            "quantization": None,
            "architecture": None,
            "context_length": window_of(model) or self.windows.get(model["id"]),
            "chat_template": None,
            "loaded": status == "loaded" if isinstance(status, str) else None,
            "default": default,
            "source": "remote",
            "repo": None,
            "created_at": datetime.fromtimestamp(created, UTC).isoformat() if number(created) else None,
        }

    def describe(self) -> dict:
        """`ok` with its default model when the server sent a reply's data or its model list in the last
        HEALTH_SECONDS; else it is asked now: `ok`, or `unavailable` and why. (llama-cpp-python's server answers
        GET /models only once the reply it is making is over: asked while streaming, it would seem down.)"""
        described = {"status": "ok", "backend": self.name, "url": self.shown_url}
        recent = self.heard_at is not None and time.monotonic() - self.heard_at < HEALTH_SECONDS
        timeout = min(HEALTH_SECONDS, self.settings.llm_timeout)
        try:
            models = self.models if recent and self.models else self.fetch_models(timeout)
            name = self.default_model(models)
            if not any(m["id"] == name for m in models):
                raise self.failure("does not list the model", f" {name!r}")
        except UpstreamError as exc:
            return {**described, "status": "unavailable", "reason": str(exc), "n_ctx": self.fallback_window}
        return {**described, "name": name, "n_ctx": self.context_window(name)}

    # Context windows and token counts

    @property
    def fallback_window(self) -> int:
        """CHATAPI_LLM_N_CTX: the window assumed of a model whose server does not say it."""
        return getattr(self.settings, "llm_n_ctx", None) or self.settings.n_ctx

    def context_window(self, model_id: str | None) -> int:
        """The model's context window in tokens: what the server lists (vLLM's `max_model_len`, ...), else
        llama-server's /props, else what an earlier answer of the server said (a vLLM /tokenize, an error that
        named the window), else CHATAPI_LLM_N_CTX, at most the context the model was trained for when the server
        says that (llama-server's `meta.n_ctx_train`)."""
        if model_id is not None and model_id not in self.windows and self.card(model_id) is not None:
            window = window_of(self.card(model_id)) or self.props_window(model_id)
            self.remember_window(model_id, window)
        window = self.windows.get(model_id)
        if window:
            return window
        trained = number(((self.card(model_id) or {}).get("meta") or {}).get("n_ctx_train"))
        return min(self.fallback_window, trained) if trained else self.fallback_window

    def remember_window(self, model_id: str | None, window: int | None, said: str = "") -> None:
        """Keep a listed model's window (None: the server does not say it, until the list is read again)."""
        if self.card(model_id) is None or (window is None and self.windows.get(model_id)):
            return  # only listed models are remembered, so that this stays as small as the list
        if window and window != self.windows.get(model_id) and said:
            log.info("the model server says %r has a window of %d tokens (%s)", model_id, window, said)
        self.windows[model_id] = window

    def props_window(self, model_id: str) -> int | None:
        """llama-server's window for one reply (its slots' n_ctx), from GET /props; None from other servers."""
        _, props = self.side_request("GET", "/props", params={"model": model_id})  # `model`: its router mode's
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        return number((settings or {}).get("n_ctx")) or number((props or {}).get("n_ctx"))

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

    def template(self, model_id: str | None) -> "Template":
        """What the model's chat template adds to a prompt, measured once from the server's usage counts
        (Template.measure), else a conservative guess (DEFAULT_TEMPLATE: ChatML's markers take some 5 tokens a
        message where a tokenizer has them, some 15 spelled out by one that has not; a preamble such as Llama
        3.1's dates some 30)."""
        if model_id in self.templates:
            return self.templates[model_id]
        template = Template.measure(self, model_id) if self.card(model_id) is not None else None
        if template is None:
            return DEFAULT_TEMPLATE  # measured again next time: the server may answer then
        self.templates[model_id] = template  # a listed model's: as many as the list holds
        return template

    # Prompts

    def build(
        self, model_id: str | None, system_prompt: str, history: list[Message], budget: int, cut: bool = True
    ) -> ChatPrompt:
        """The chat messages for the next Assistant turn within `budget` tokens, as the local PromptBuilder keeps
        them (see fit_history); `truncated` says how many messages were left out or cut."""
        template = self.template(model_id)

        def count(text: str) -> int:
            return self.tokenizer.count(model_id, text)

        system, kept, truncated = fit_history(system_prompt, history, budget, cut, count, template)
        prompt = chat_messages(system, kept)
        prompt.truncated = truncated
        return prompt

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

    def cancel(self, reply: Reply) -> None:
        """Close the reply's request to the server now (its greenlet ends it as cancelled); a reply whose
        request has not started sees its `cancelled` flag first."""
        greenlet = self.streaming.pop(reply, None)
        if greenlet is not None:
            greenlet.kill(block=False)

    def request_body(self, model_id: str, prompt: ChatPrompt, options) -> dict:
        body = {
            "model": model_id,
            "messages": prompt.messages,
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
        models = self.listed_models(timeout)
        name = self.default_model(models)
        if not any(m["id"] == name for m in models):
            raise self.failure("does not list the model", f" {name!r}")
        return name

    def _read(self, reply: Reply, progress: dict) -> None:
        timeout = self.settings.llm_timeout
        model_id = self.reply_model(reply, timeout)
        body = self.request_body(model_id, reply.job.prompt, reply.job.options)
        url = f"{self.url}/chat/completions"
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
                    self.learn_window(model_id, error)
                    said = error.get("message") if isinstance(error, dict) else error
                    raise self.failure("failed", f": {said}")
                progress["usage"] = chunk.get("usage") or progress["usage"]
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        progress["first_token"] = progress["first_token"] or time.monotonic()
                        reply.add_text(text)
                    if choice.get("finish_reason"):
                        progress["finish_reason"] = FINISH_REASONS.get(choice["finish_reason"], "stop")
        if progress["finish_reason"] is None:
            if progress["first_token"] is None:
                self.ask_why(model_id, body)
            raise self.failure("ended the stream before the reply's end")

    def ask_why(self, model_id: str, body: dict) -> None:
        """A stream that ended before any text: llama-cpp-python's server ends so the stream of a prompt longer
        than the model's window, and says so (and the window) only to a request that does not stream. Asked so,
        for one token, its error is raised (and the window learned); nothing when it answers."""
        probe = {**body, "stream": False, "max_tokens": 1}
        probe.pop("stream_options")
        url = f"{self.url}/chat/completions"
        # On a connection of its own: the server has just broken the stream's, which the session would reuse.
        response = requests.post(url, json=probe, headers=self.headers, timeout=self.settings.llm_timeout)
        if response.status_code != 200:
            raise self.refused(model_id, response)

    def refused(self, model_id: str, response: requests.Response) -> UpstreamError:
        """The server's error answer to a reply's request, the window it names learned."""
        try:
            self.learn_window(model_id, response.json().get("error"))
        except (ValueError, AttributeError):
            pass
        return self.failure(f"answered {answer(response)}", public=f"the model server answered {response.status_code}")

    def learn_window(self, model_id: str, error) -> None:
        """A prompt the server found too long for the model's window: the window its error names is the one
        the next prompts are fitted to (llama-server's `n_ctx`; vLLM's and llama-cpp-python's "maximum context
        length is N tokens", OpenAI's words)."""
        if not isinstance(error, dict):
            return
        said = re.search(r"maximum context length is (\d+) tokens", str(error.get("message")))
        window = number(error.get("n_ctx")) or (int(said.group(1)) if said else None)
        if window:
            self.remember_window(model_id, window, said="its error")


@dataclass(frozen=True)
class Template:
    """What a model's chat template adds to a prompt, beside its messages' texts."""

    fixed: int  # tokens of every prompt whatever its messages: a BOS, the generation prompt, a preamble
    per_message: int  # tokens of a message's turn markers
    system: int  # tokens a system prompt's place takes, beside its text

    def cost(self, count: Callable[[str], int], system: str, texts: list[str]) -> int:
        """A prompt's tokens, or a few more: each message is given SLACK more, as a text tokenized alone may take
        a token or two fewer than inside the prompt."""
        head = count(system) + self.system + SLACK if system else 0
        return self.fixed + head + sum(self.message(count, text) for text in texts)

    def message(self, count: Callable[[str], int], text: str) -> int:
        return count(text) + self.per_message + SLACK

    @classmethod
    def measure(cls, backend: RemoteBackend, model_id: str | None) -> "Template | None":
        """From the prompt tokens the server reports for three tiny chats (a one-token completion each, once per
        model): a user message; a system prompt and a user message; and those with two more messages. None when
        it reports none, and for a server without a tokenizer route: a hosted API, or a chatapi, which would keep
        the three chats."""
        if model_id is None:
            return None
        text = backend.tokenizer.count(model_id, PROBE_TEXT)
        if backend.tokenizer.route is None:
            return None
        counted = []
        for chat in PROBE_CHATS:
            counted.append(backend.prompt_tokens(model_id, chat))
            if counted[-1] is None:
                return None
        alone, with_system, longer = counted
        per_message = max(0, math.ceil((longer - with_system) / 2) - text)
        fixed = max(0, alone - per_message - text)
        template = cls(fixed, per_message, system=max(0, with_system - alone - text))
        log.info("the chat template of %r adds %s", model_id, template)
        return template


DEFAULT_TEMPLATE = Template(fixed=64, per_message=16, system=16)
PROBE_TEXT = "a"
PROBE_CHATS = [
    [{"role": role, "content": PROBE_TEXT} for role in roles]
    for roles in (("user",), ("system", "user"), ("system", "user", "assistant", "user"))
]


class Tokenizer:
    """Token counts from the model server's own tokenizer, found by trying the routes servers have for it (at
    the server's root, each answering {"tokens": [...]}): llama-cpp-python's POST /extras/tokenize {"input"},
    llama-server's POST /tokenize {"content"}, vLLM's POST /tokenize {"prompt"}. Without one, an `estimate`.
    The counts are remembered (a chat's messages are counted again for each of its replies)."""

    ROUTES = (
        ("/extras/tokenize", lambda model, text: {"model": model, "input": text}),
        ("/tokenize", lambda model, text: {"model": model, "content": text}),
        ("/tokenize", lambda model, text: {"model": model, "prompt": text, "add_special_tokens": False}),
    )
    NOT_HERE = (400, 404, 405, 422)  # answers that say a route is not this server's (others say nothing of it)

    def __init__(self, backend: RemoteBackend):
        self.backend = backend
        self.route: tuple | None = None  # the route that answered, once one has
        self.absent = False  # every route answered that it is not there: estimates only
        self.counts: OrderedDict[tuple, int] = OrderedDict()  # (model, text's digest) -> tokens, COUNTS_KEPT at most

    def count(self, model_id: str | None, text: str) -> int:
        if not text:
            return 0
        key = (model_id, hashlib.blake2b(text.encode(), digest_size=16).digest())
        try:
            self.counts.move_to_end(key)
            return self.counts[key]
        except KeyError:  # not counted yet (or just dropped by internet mode's thread, which counts too)
            pass
        counted = self.ask(model_id, text)
        if counted is None:
            return estimate(text)  # not remembered: the server may count it next time
        self.counts[key] = counted
        if len(self.counts) > COUNTS_KEPT:
            self.counts.popitem(last=False)
        return counted

    def ask(self, model_id: str | None, text: str) -> int | None:
        """The server's count, or None."""
        if self.absent or model_id is None:
            return None
        for route in [self.route] if self.route else self.ROUTES:
            path, body = route
            status, answered = self.backend.side_request("POST", path, json=body(model_id, text))
            tokens = answered.get("tokens") if isinstance(answered, dict) else None
            if isinstance(tokens, list):
                if self.route is None:
                    log.info("the model server at %s counts tokens at %s", self.backend.shown_url, path)
                self.route = route
                if number(answered.get("max_model_len")):  # vLLM's
                    self.backend.remember_window(model_id, answered["max_model_len"], said="its /tokenize")
                return len(tokens)
            if status not in self.NOT_HERE:
                return None  # no answer (down, 401, 503), or an odd one: no verdict on the route
        if self.route is None:
            log.info(
                "the model server at %s has no tokenizer route: token counts are estimated", self.backend.shown_url
            )
            self.absent = True
        return None


def estimate(text: str) -> int:
    """A text's tokens where the server cannot count them, on the high side: a token for each digit, mark
    (punctuation, symbol, emoji) and space that does not lead a word, which many tokenizers (Gemma's, Llama 2's,
    Mistral's) take one by one; and for each word, one for each BYTES_PER_TOKEN bytes of its UTF-8, at least one,
    where today's tokenizers take 4 or more bytes a token on English words, 3 or more on Cyrillic and about 3 on
    Chinese or Japanese (a character a token). Over-counting leaves out a little more history than needed;
    under-counting would send a prompt the server refuses."""
    singles = sum(1 for c in text if c.isdigit() or not (c.isalnum() or c.isspace()))
    return (
        singles
        + len(LONE_SPACE.findall(text))
        + sum(math.ceil(len(w.encode()) / BYTES_PER_TOKEN) for w in WORD.findall(text))
    )


def fit_history(
    system_prompt: str,
    history: list[Message],
    budget: int,
    cut: bool,
    count: Callable[[str], int],
    template: Template,
) -> tuple[str, list[Message], int]:
    """The system prompt and the messages of `history` that fit `budget` tokens, and how many messages were left
    out or cut (a cut system prompt counts as one), as the local PromptBuilder.build keeps them: the oldest go
    first, on either side of the latest Human message; that one, the last message and the system prompt always
    stay. If they alone are too long, a system prompt that leaves the messages less than half the budget is cut,
    keeping its beginning, and the messages are cut keeping their ends, sharing the room left (the shorter one
    whole when it takes less than its share). Without `cut` that is a ContextLengthExceeded instead.

    `count` gives a text's tokens, `template` what the chat template adds. Only the messages that might fit are
    counted, the newest first."""
    latest = max(i for i, m in enumerate(history) if m.role == "Human")
    always = sorted({latest, len(history) - 1})
    system = system_prompt.strip()
    needed = template.cost(count, system, [history[i].text.strip() for i in always])
    kept = set(always)
    for i in reversed([i for i in range(len(history)) if i not in kept]):  # the newest first: the oldest go
        more = template.message(count, history[i].text.strip())
        if needed + more > budget:
            break
        needed += more
        kept.add(i)
    dropped = len(history) - len(kept)
    messages = [m for i, m in enumerate(history) if i in kept]
    if needed <= budget:
        return system_prompt, messages, dropped
    if not cut:
        raise ContextLengthExceeded(needed, budget)
    # Only the messages kept always are left, and too long: cut.
    stubs = [ELLIPSIS.strip()] * len(messages)  # the messages cut to nothing
    cut_system = system_prompt
    if system and template.cost(count, system, stubs) > budget // 2:
        room = budget // 2 - template.cost(count, MORE.strip(), stubs)
        cut_system = (shorten(system, room, count, keep_end=False).rstrip() + MORE).strip()
    room = budget - template.cost(count, cut_system.strip(), stubs)
    texts = [m.text.strip() for m in messages]
    sizes = [count(text) for text in texts]
    shortened = list(messages)
    for done, index in enumerate(sorted(range(len(messages)), key=lambda i: sizes[i])):
        share = max(0, room // (len(messages) - done))
        if sizes[index] > share:
            shortened[index] = Message(messages[index].role, ELLIPSIS + shorten(texts[index], share, count).lstrip())
        room -= min(sizes[index], share)
    truncated = dropped + sum(a != b for a, b in zip(messages, shortened, strict=True)) + (cut_system != system_prompt)
    return cut_system, shortened, truncated


def shorten(text: str, tokens: int, count: Callable[[str], int], keep_end: bool = True) -> str:
    """The longest end (or beginning) of `text` that `count` finds within `tokens`: sized by characters in
    proportion, then measured again."""
    have = count(text)
    if have <= max(0, tokens):
        return text
    size = len(text) * max(0, tokens) // have
    while size > 0:
        piece = text[len(text) - size :] if keep_end else text[:size]
        got = count(piece)
        if got <= tokens:
            return piece
        size = min(size - 1, size * tokens // got)
    return ""


def window_of(model: dict | None) -> int | None:
    """A model's context window as the server lists it, if it does: vLLM's `max_model_len`, others'
    `context_length`, `context_window` or `n_ctx` (at the top or in its `meta`). Not llama-server's
    `meta.n_ctx_train`: the server's own window may be smaller."""
    if not model:
        return None
    meta = model.get("meta") if isinstance(model.get("meta"), dict) else {}
    for place, field in itertools.product((model, meta), WINDOW_FIELDS):
        if number(place.get(field)):
            return number(place.get(field))
    return None


def number(value) -> int | None:
    """A positive integer the server sent, else None (a missing field, a null, a string)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


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
