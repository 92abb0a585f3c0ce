"""The remote backend: replies streamed from an OpenAI-compatible server's /chat/completions (vLLM, llama.cpp's
server, llama-cpp-python's, Ollama), one greenlet per reply, instead of a model in this process.

The server applies its own chat template and counts the tokens: the prompt goes as chat messages, and a reply's
token counts are the ones the server reports (`stream_options.include_usage`), or None when it reports none.
"""

import json
import logging
import re
import time
from urllib.parse import urlsplit, urlunsplit

import gevent
import requests

from .engine import Result
from .prompt import ChatPrompt, Message, chat_messages
from .reply import OnEnd, OnFailure, Reply

CHARS_PER_TOKEN = 4  # internet mode's room for sources, measured without the server's tokenizer
HEALTH_SECONDS = 5  # /health waits this long for the server at most
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
    why it failed (`on_failure`). Stopping a reply closes its request to the server."""

    name = "openai"

    def __init__(self, settings, on_end: OnEnd, on_failure: OnFailure):
        self.settings = settings
        self.on_end = on_end
        self.on_failure = on_failure
        self.url = settings.llm_url.rstrip("/")
        self.shown_url = without_credentials(self.url)  # the URL as messages and /health show it
        self.headers = {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key else {}
        self.model_name: str | None = settings.llm_model  # else the first model the server lists, once known
        self.card: dict | None = None  # the model as the server listed it, once it has
        self.status = "ok"  # replies are taken at once: a server that fails one ends it with an error event
        self.error: str | None = None
        self.session = requests.Session()  # keeps connections to the server open between replies
        self.streaming: dict[Reply, gevent.Greenlet] = {}  # the greenlets reading a response, to close it
        # When the server last sent something (a reply's data, its model list): /health takes that as an answer.
        self.heard_at: float | None = None

    def load(self) -> None:
        """Nothing to load: the server holds the model."""

    @property
    def n_ctx(self) -> int:
        """The window the replies assume the server has (CHATAPI_N_CTX): it bounds max_tokens and the sources."""
        return self.settings.n_ctx

    def failure(self, problem: str, said: str = "", public: str | None = None) -> UpstreamError:
        """UpstreamError: "the model server at URL <problem><said>", and without the URL and `said` (the server's or
        the system's words) for clients, unless `public` is given."""
        return UpstreamError(
            f"the model server at {self.shown_url} {problem}{said}", public or f"the model server {problem}"
        )

    def listed_models(self, timeout: float) -> list[dict]:
        """The server's model list (GET /models); UpstreamError when it cannot be read or is empty."""
        try:
            response = self.session.get(f"{self.url}/models", headers=self.headers, timeout=timeout)
        except requests.Timeout:
            raise self.failure(f"did not answer within {timeout:g} s") from None
        except requests.RequestException as exc:
            raise self.failure("cannot be reached", f": {reason(exc)}") from None
        if response.status_code != 200:
            raise self.failure(
                f"answered {answer(response)} to GET /models",
                public=f"the model server answered {response.status_code} to GET /models",
            )
        try:
            models = [m for m in response.json()["data"] if isinstance(m, dict) and m.get("id")]
        except (ValueError, KeyError, TypeError):
            raise self.failure("sent no model list from GET /models") from None
        if not models:
            raise self.failure("lists no model")
        if self.model_name is not None and not any(m["id"] == self.model_name for m in models):
            raise self.failure("does not list the model", f" {self.model_name!r}")
        self.heard_at = time.monotonic()
        return models

    def model(self, timeout: float) -> dict:
        """The model the replies ask for, as the server lists it."""
        models = self.listed_models(timeout)
        model = next((m for m in models if m["id"] == self.model_name), models[0])
        self.model_name = model["id"]
        self.card = {"id": model["id"], "created": model.get("created") or 0}
        return model

    def describe(self) -> dict:
        """`ok` with its model when the server sent a reply's data or its model list in the last HEALTH_SECONDS;
        else it is asked now: `ok`, or `unavailable` and why. (llama-cpp-python's server answers GET /models only
        once the reply it is making is over: asked while streaming, it would seem down.)"""
        described = {"status": "ok", "backend": self.name, "url": self.shown_url, "n_ctx": self.n_ctx}
        recent = self.heard_at is not None and time.monotonic() - self.heard_at < HEALTH_SECONDS
        if recent and self.model_name is not None:
            return {**described, "name": self.model_name}
        try:
            described["name"] = self.model(min(HEALTH_SECONDS, self.settings.llm_timeout))["id"]
        except UpstreamError as exc:
            described.update(status="unavailable", reason=str(exc))
        return described

    def model_card(self) -> dict:
        """The model as the server listed it: asked once, then remembered (/health asks every time)."""
        if self.card is None:
            self.model(self.settings.llm_timeout)
        return self.card

    # Prompts

    def build(self, system_prompt: str, history: list[Message], budget: int, cut: bool = True) -> ChatPrompt:
        """The whole history: the server knows its window (a history too long for it is its error to report), so
        nothing is cut here either way."""
        return chat_messages(system_prompt, history)

    def with_sources(self, prompt: ChatPrompt, sources: str, layout: str) -> ChatPrompt:
        with_them = chat_messages(prompt.system_prompt, prompt.history, sources, layout)
        with_them.stop = prompt.stop
        return with_them

    def count_tokens(self, texts: list[str]) -> list[int]:
        """An estimate, for internet mode's room for sources only: the server's tokenizer is not at hand."""
        return [-(-len(text) // CHARS_PER_TOKEN) for text in texts]

    def read_ahead(self, reply: Reply, prompt: ChatPrompt, busy: bool) -> None:
        """Nothing to read ahead: the server caches prompts as it sees fit."""

    # Generating

    def generate(self, reply: Reply) -> None:
        gevent.spawn(self._stream, reply)

    def cancel(self, reply: Reply) -> None:
        """Close the reply's request to the server now (its greenlet ends it as cancelled); a reply whose
        request has not started sees its `cancelled` flag first."""
        greenlet = self.streaming.pop(reply, None)
        if greenlet is not None:
            greenlet.kill(block=False)

    def request_body(self, prompt: ChatPrompt, options) -> dict:
        body = {
            "model": self.model_name,
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

    def _read(self, reply: Reply, progress: dict) -> None:
        timeout = self.settings.llm_timeout
        if self.model_name is None:
            self.model(timeout)
        body = self.request_body(reply.job.prompt, reply.job.options)
        url = f"{self.url}/chat/completions"
        with self.session.post(url, json=body, headers=self.headers, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise self.failure(
                    f"answered {answer(response)}", public=f"the model server answered {response.status_code}"
                )
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
            raise self.failure("ended the stream before the reply's end")


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
