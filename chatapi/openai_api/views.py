"""The OpenAI-compatible API under /v1: the model list and chat completions, streamed or not, for the clients
that speak OpenAI's API (its SDKs, Open WebUI, LibreChat, editors).

A completion is a reply of the same reply service as the chats' (the same queue, batching and metrics, mode
"openai"), answering the messages the request carries; nothing is stored unless CHATAPI_OPENAI_STORE is on.
Errors here are in OpenAI's shape (chatapi/errors.py).
"""

import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from functools import partial

import gevent
import gevent.socket
import marshmallow as ma
import sqlalchemy as sa
from flask import Blueprint, Flask, current_app, request
from flask_smorest import abort
from marshmallow import fields, validate
from sqlalchemy.exc import SQLAlchemyError

from .. import limits, metrics, replies
from ..extensions import db
from ..llm import prompt
from ..llm.prompt import ContextLengthExceeded, Message
from ..llm.remote import UpstreamError
from ..llm.reply import Reply
from ..llm.service import QueueFull, ReplyService
from ..models import Chat, Conversation, utcnow
from ..openapi import json_object
from ..schemas import ConversationSchema, StorableString, message_length

MODE = "openai"  # the replies' mode, as the metrics label them
OWNER = "chatapi"
# OpenAI's role -> the API's (the one role table's inverse); system and developer messages make the system prompt.
ROLES = {openai: role for role, openai in prompt.ROLES.items()}
MAX_STOPS = 4  # as OpenAI allows
# A stop string is a delimiter (a turn marker, a closing tag, a line or two): 500 characters is several lines of
# one. The stop scanner's cost a token does not grow with it; the cap bounds the text a reply holds back from its
# stream (up to a stop string's length) and what is sent on to a remote model server.
MAX_STOP_CHARS = 500
NAME_CHARS = 200  # a stored exchange's chat name: its first user message, cut to a chat name's length
log = logging.getLogger(__name__)

bp = Blueprint("openai", __name__, url_prefix="/v1")


# The request, validated as OpenAI does: JSON types as they are (no "0.5" for a number), unknown fields ignored.


class Number(fields.Float):
    """A JSON number: not a numeric string, not a boolean."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str | bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Integer(fields.Integer):
    """A JSON integer: not a boolean either."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Boolean(fields.Boolean):
    """A JSON boolean: not "true" or 1."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def storable_text(value: str) -> str:
    """Text the model can read and the databases can store (no NUL, no lone surrogate), as long as a chat
    message may be."""
    value = StorableString().deserialize(value)
    message_length(value)
    return value


class Content(fields.Field):
    """A message's content: a string, or a list of text parts ({"type": "text", "text": ...}) joined by lines."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return storable_text(value)
        if not isinstance(value, list):
            raise ma.ValidationError("must be a string or a list of text parts")
        texts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else None
                raise ma.ValidationError({index: [f"only text parts are supported, not {kind!r}"]})
            if not isinstance(part.get("text"), str):
                raise ma.ValidationError({index: {"text": ["must be a string"]}})
            try:
                texts.append(storable_text(part["text"]))
            except ma.ValidationError as error:
                raise ma.ValidationError({index: {"text": error.messages}}) from error
        return storable_text("\n".join(texts))


class Stop(fields.Field):
    """`stop`: a string or a list of at most MAX_STOPS strings of at most MAX_STOP_CHARS characters; always a list
    once read."""

    def _deserialize(self, value, attr, data, **kwargs):
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
            raise ma.ValidationError("must be a string or a list of strings")
        if len(stops) > MAX_STOPS:
            raise ma.ValidationError(f"at most {MAX_STOPS} stop strings")
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ma.ValidationError(f"a stop string may be at most {MAX_STOP_CHARS} characters long")
        return stops


class MessageSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE  # name, refusal, ...

    role = fields.String(required=True, validate=validate.OneOf(["system", "developer", "user", "assistant"]))
    content = Content(required=True, allow_none=True)
    tool_calls = fields.Raw(allow_none=True)

    @ma.validates_schema
    def content_present(self, data, **kwargs):
        if data.get("tool_calls"):
            raise ma.ValidationError("tool calls are not supported", "tool_calls")
        if data.get("content") is None and data.get("role") != "assistant":
            raise ma.ValidationError("must be a string or a list of text parts", "content")


class StreamOptionsSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    include_usage = Boolean(allow_none=True)


class ChatCompletionSchema(ma.Schema):
    """The parameters served; UNSUPPORTED lists those refused, every other field is ignored."""

    class Meta:
        unknown = ma.EXCLUDE  # user, metadata, store, presence_penalty, frequency_penalty, ...

    model = fields.String(required=True)
    messages = fields.List(fields.Nested(MessageSchema), required=True, validate=validate.Length(min=1))
    max_tokens = Integer(allow_none=True, validate=validate.Range(min=1))
    max_completion_tokens = Integer(allow_none=True, validate=validate.Range(min=1))
    temperature = Number(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = Number(allow_none=True, validate=validate.Range(min=0, max=1))
    seed = Integer(allow_none=True)
    stop = Stop(allow_none=True)
    n = Integer(allow_none=True)
    stream = Boolean(allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    # Read only to refuse them (see UNSUPPORTED).
    tools = fields.Raw(allow_none=True)
    tool_choice = fields.Raw(allow_none=True)
    functions = fields.Raw(allow_none=True)
    function_call = fields.Raw(allow_none=True)
    response_format = fields.Raw(allow_none=True)
    logprobs = fields.Raw(allow_none=True)
    top_logprobs = fields.Raw(allow_none=True)
    logit_bias = fields.Raw(allow_none=True)
    modalities = fields.Raw(allow_none=True)
    audio = fields.Raw(allow_none=True)


def harmless_tool_choice(value) -> bool:
    return value in (None, "none", "auto")


# Parameters that would change what the answer means, and the values of theirs that do not.
UNSUPPORTED = {
    "n": (lambda value: value in (None, 1), "only n=1 is supported"),
    "tools": (lambda value: not value, "tools are not supported"),
    "functions": (lambda value: not value, "functions are not supported"),
    "tool_choice": (harmless_tool_choice, "tool calls are not supported"),
    "function_call": (harmless_tool_choice, "function calls are not supported"),
    "response_format": (
        lambda value: value is None or value == {"type": "text"},
        "only the text response format is supported",
    ),
    "logprobs": (lambda value: value in (None, False), "logprobs are not supported"),
    "top_logprobs": (lambda value: value in (None, 0), "logprobs are not supported"),
    "logit_bias": (lambda value: not value, "logit_bias is not supported"),
    "modalities": (lambda value: value is None or value == ["text"], "only the text modality is supported"),
    "audio": (lambda value: value is None, "audio output is not supported"),
}


def param_path(messages: dict) -> tuple[str, str]:
    """The first field at fault in marshmallow's nested errors, as OpenAI names it (messages[0].content),
    and its message."""
    path = ""
    while isinstance(messages, dict):
        key, messages = next(iter(messages.items()))
        if key == "_schema":
            continue
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else key)
    return path, messages[0] if isinstance(messages, list) else str(messages)


def bad_request(message: str, param: str | None = None, code: str | None = None):
    abort(400, message=message, param=param, code_name=code)


def read_completion_request() -> dict:
    """The request's parameters, validated; 400 in OpenAI's shape naming the `param` at fault (415 for a body
    not sent as JSON)."""
    try:
        args = ChatCompletionSchema().load(json_object(request))
    except ma.ValidationError as error:
        param, message = param_path(error.messages)
        bad_request(f"{param}: {message}", param)
    for name, (allowed, message) in UNSUPPORTED.items():
        if not allowed(args.get(name)):
            bad_request(message, name, "unsupported_parameter")
    if not any(m["role"] == "user" for m in args["messages"]):
        bad_request("messages must hold a user message", "messages")
    return args


def prompt_parts(messages: list[dict]) -> tuple[str, list[Message]]:
    """The system prompt (the system and developer messages, joined) and the conversation."""
    system = "\n\n".join(m["content"] or "" for m in messages if m["role"] not in ROLES)
    history = [Message(ROLES[m["role"]], m["content"] or "") for m in messages if m["role"] in ROLES]
    return system, history


def model_card(service: ReplyService) -> dict:
    """The model as OpenAI lists it; 503 when a remote model server cannot say which it serves."""
    try:
        card = service.model_card()
    except UpstreamError as exc:
        current_app.logger.error("%s", exc)  # where and why; the client is told what
        abort(503, message=exc.public, code_name="model_not_ready")
    return {"id": card["id"], "object": "model", "created": card["created"], "owned_by": OWNER}


@bp.route("/models", methods=["GET"])
def list_models():
    """The loaded model, as OpenAI lists models."""
    return {"object": "list", "data": [model_card(replies.ready_service())]}


@bp.route("/models/<path:model_id>", methods=["GET"])
def get_model(model_id: str):
    """The loaded model by its id; 404 for any other."""
    card = model_card(replies.ready_service())
    if model_id != card["id"]:
        abort(404, message=f"the model {model_id!r} does not exist", param="model", code_name="model_not_found")
    return card


@bp.route("/chat/completions", methods=["POST"])
def create_chat_completion():
    """A chat completion of the messages given, as one `chat.completion` or a stream of chunks."""
    args = read_completion_request()
    service = replies.ready_service()
    model = model_card(service)["id"]
    system_prompt, history = prompt_parts(args["messages"])
    given = {
        "max_tokens": args.get("max_completion_tokens") or args.get("max_tokens"),
        "temperature": args.get("temperature"),
        "top_p": args.get("top_p"),
        "seed": args["seed"] % 2**32 if args.get("seed") is not None else None,  # the sampler's seed is 32-bit
    }
    options = service.options_from({name: value for name, value in given.items() if value is not None})
    # As the chat API allows: at most half the window, the rest for the conversation.
    options.max_tokens = min(options.max_tokens, service.n_ctx // 2)
    limits.count_reply_start()
    try:
        reply = service.start(
            uuid.uuid4(),  # no chat: a reply of its own
            MODE,
            history,
            system_prompt,
            options,
            answering=None,
            save=partial(store_exchange, current_app._get_current_object(), system_prompt, history),
            on_event=metrics.reply_events(),
            stops=args.get("stop"),
            by_prefix=True,  # its client resends the conversation: the cache is found by its tokens
            resumable=False,  # nobody can come back for it: forgotten once it ends, never shared through Redis
            cut=False,  # as OpenAI: the messages whole, or an error the client can act on
        )
    except QueueFull:
        abort(503, message="the model's queue is full", headers={"Retry-After": "5"}, code_name="queue_full")
    except ContextLengthExceeded as exc:
        bad_request(
            f"This model's maximum context length is {service.n_ctx} tokens. However, you requested"
            f" {exc.needed + options.max_tokens} tokens ({exc.needed} in the messages, {options.max_tokens} in the"
            " completion), with the older messages left out: the system prompt, the latest user message and the"
            " last message are kept whole. Please reduce the length of the messages or completion.",
            "messages",
            "context_length_exceeded",
        )
    completion = Completion(reply, model)
    if args.get("stream"):
        include_usage = bool((args.get("stream_options") or {}).get("include_usage"))
        return replies.event_stream_response(completion.chunks(service, include_usage))
    watcher = cancel_when_client_leaves(request.environ.get("gunicorn.socket"), service, reply)
    try:
        return completion.whole()
    finally:
        if watcher is not None:
            watcher.kill(block=False)


def cancel_when_client_leaves(client: socket.socket | None, service: ReplyService, reply: Reply):
    """A greenlet that cancels the reply as soon as its client hangs up, else None. A reply answered whole keeps its
    listener (the request) to the end, so without this it would run to max_tokens for nobody.

    Under gunicorn (its socket in the environ) nothing reads the connection while the reply is made: the request's
    body was read whole, and a client waits for its answer. So when it becomes readable, the client either closed
    it (a peek reads nothing) or sent something more (a pipelined request: the client is there, and the watch
    stops)."""
    if client is None:
        return None

    def watch():
        try:
            gevent.socket.wait_read(client.fileno())
            gone = client.recv(1, socket.MSG_PEEK) == b""
        except ValueError:  # TLS: no peeking; the reply runs its course
            return
        except OSError:  # reset by the peer
            gone = True
        if gone and not reply.finished:
            log.info("the client of chat completion %s left: its reply is stopped", reply.message_id)
            service.cancel(reply)

    return gevent.spawn(watch)


FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}


class Completion:
    """One reply told as OpenAI tells a chat completion."""

    def __init__(self, reply: Reply, model: str):
        self.reply = reply
        self.id = f"chatcmpl-{reply.message_id.hex}"
        self.created = int(time.time())
        self.model = model
        self.started = False  # whether text has come: the white space that leads a reply is left out

    def texts_and_end(self, records: Iterator) -> Iterator[tuple[str | None, dict | None]]:
        """From the reply's events: (text, None) for each piece, (None, None) for a ping, then (None, the
        `done` or `error` data)."""
        for record in records:
            if record is None:
                yield None, None
                continue
            event, data = record
            if event is None:
                text = data["content"] if self.started else data["content"].lstrip()
                if text:
                    self.started = True
                    yield text, None
            elif event in ("done", "error"):
                yield None, {"event": event, **data}

    def usage(self, done: dict) -> dict:
        """OpenAI's usage; its counts None where the backend knows none (a remote server that reports none)."""
        usage = done["usage"]
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion if prompt is not None and completion is not None else None,
            "prompt_tokens_details": {"cached_tokens": usage["cached_tokens"]},
        }

    def whole(self):
        """The finished reply as a `chat.completion` (or its error in OpenAI's shape)."""
        pieces, end = [], None
        for text, ended in self.texts_and_end(self.reply.listen(records=True)):
            if text:
                pieces.append(text)
            end = ended or end
        if end["event"] == "error":
            abort(end["code"], message=end["message"])
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
                    "logprobs": None,
                    "finish_reason": FINISH_REASONS[end["finish_reason"]],
                }
            ],
            "usage": self.usage(end),
        }

    def chunk(self, delta: dict, finish_reason: str | None = None, include_usage: bool = False) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self.event({"choices": [choice], **({"usage": None} if include_usage else {})})

    def event(self, fields: dict) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return "data: " + json.dumps({**body, **fields}, ensure_ascii=False) + "\n\n"

    def chunks(self, service: ReplyService, include_usage: bool) -> Iterator[str]:
        """The reply as OpenAI's stream: a chunk with the role, one per text piece, one with the finish reason,
        the usage when asked, then [DONE]. A client that leaves cancels the reply at once: nobody can come back
        for it."""
        try:
            yield self.chunk({"role": "assistant", "content": ""}, include_usage=include_usage)
            for text, end in self.texts_and_end(self.reply.listen(records=True)):
                if text:
                    yield self.chunk({"content": text}, include_usage=include_usage)
                elif end is None:
                    yield ": ping\n\n"
                elif end["event"] == "error":
                    kind = "server_error" if end["code"] >= 500 else "invalid_request_error"
                    error = {"message": end["message"], "type": kind, "param": None, "code": None}
                    yield "data: " + json.dumps({"error": error}, ensure_ascii=False) + "\n\n"
                    return
                else:
                    yield self.chunk({}, FINISH_REASONS[end["finish_reason"]], include_usage)
                    if include_usage:
                        yield self.event({"choices": [], "usage": self.usage(end)})
            yield "data: [DONE]\n\n"
        finally:
            if not self.reply.finished:
                service.cancel(self.reply)


def store_exchange(app: Flask, system_prompt: str, history: list[Message], reply: Reply) -> dict | None:
    """With CHATAPI_OPENAI_STORE, store a finished exchange as a chat, so that it shows in the page and the chat
    API: the chat it continues (a client resends the whole conversation each turn), else a new one named after
    the first user message. The saved reply, or None. A database that fails is logged: the client still gets
    its completion, which is what it asked for."""
    if not app.config["CHATAPI_OPENAI_STORE"] or not reply.text:
        return None
    with app.app_context():
        try:
            chat, stored = continued_chat(system_prompt, history)
            if chat is None:
                chat = Chat(chat_name(history), system_prompt.strip() or None)
                db.session.add(chat)
            # Apart by a microsecond each, so that the chat's order (created_at, id) is the conversation's.
            now = utcnow()
            added = [Conversation(chat, m.role, m.text) for m in history[stored:]]
            answer = Conversation(chat, "Assistant", reply.text, id=reply.message_id)
            for offset, conversation in enumerate([*added, answer]):
                conversation.created_at = conversation.updated_at = now + timedelta(microseconds=offset)
            chat.updated_at = answer.created_at
            db.session.add_all([*added, answer])
            db.session.commit()
            return ConversationSchema().dump(answer)
        except SQLAlchemyError:
            db.session.rollback()
            log.exception("the chat completion could not be stored")
            return None
        finally:
            db.session.remove()


def chat_name(history: list[Message]) -> str:
    first = next(m.text for m in history if m.role == "Human")
    name = " ".join(first.split())
    return (name[: NAME_CHARS - 1] + "…" if len(name) > NAME_CHARS else name) or "Chat completion"


def continued_chat(system_prompt: str, history: list[Message]) -> tuple[Chat | None, int]:
    """The stored chat whose messages begin the conversation (the same name and system prompt), and how many
    of them it holds; (None, 0) when there is none."""
    system = system_prompt.strip() or None
    same_system = Chat.system_prompt.is_(None) if system is None else Chat.system_prompt == system
    query = sa.select(Chat).where(Chat.name == chat_name(history), same_system)
    query = query.order_by(Chat.updated_at.desc()).limit(5)
    wanted = [(m.role, m.text.strip()) for m in history]
    for chat in db.session.scalars(query):
        stored = [(c.role, c.message.strip()) for c in chat.history()]
        if 0 < len(stored) < len(wanted) and wanted[: len(stored)] == stored:
            return chat, len(stored)
    return None, 0
