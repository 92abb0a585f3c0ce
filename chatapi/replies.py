"""The chats' replies as the API serves them: start, join or resume a reply's stream, stop it, save it.

This is the app's side of the model room (chatapi/llm): `start` is the one way the app starts a reply, for the
chat API and /v1 alike. It reads and writes the database, runs internet mode's research (chatapi/web) and
publishes what it finds, and turns a reply into an HTTP response.
"""

import dataclasses
import json
import os
import uuid
from functools import partial

from flask import Flask, Response, current_app
from flask_smorest import abort
from sqlalchemy.exc import OperationalError

from . import auth, limits, metrics, usage
from .disk import is_disk_full
from .extensions import db
from .llm.catalog import UnknownModel
from .llm.grammar import UnsupportedSchema
from .llm.prompt import Message
from .llm.queue import ReplyService
from .llm.reply import ChatGone, Reply, ReplyRequest, Researched, Resumable, StoreUnavailable
from .llm.settings import ModelSettings
from .models import Chat, Conversation
from .schemas import ConversationSchema
from .web.cite import cite
from .web.rank import Source
from .web.research import ResearchSettings, gather

# One service per model settings in a process (the tests make several apps with the same model).
_services: dict[ModelSettings, ReplyService] = {}


def init_app(app: Flask) -> None:
    # Read at start, so that a search backend that cannot be used stops the server rather than a reply.
    app.extensions["web_settings"] = ResearchSettings.from_config(app.config)
    settings = ModelSettings.from_config(app.config, os.path.join(app.instance_path, "models"))
    if settings not in _services:
        _services[settings] = ReplyService(settings)
    app.extensions["replies"] = _services[settings]
    if settings.backend == "local":  # a remote server's models are its own, and it may not be up yet
        try:
            _services[settings].resolve(None)
        except UnknownModel:
            raise ValueError(
                f"CHATAPI_MODEL={settings.model!r} names no model: give an id of `flask models list`, or a GGUF's path"
            ) from None


def service() -> ReplyService:
    """The reply service of the current app."""
    return current_app.extensions["replies"]


def start(request: ReplyRequest) -> Resumable:
    """Start a reply: the one way the app does, for the chat API and /v1 alike. ModelNotReady or QueueFull (503s
    in each API's shape, chatapi/errors.py) when the model is not ready or its queue is full, 429 for a person past
    CHATAPI_DAILY_TOKENS today or over CHATAPI_RATE_LIMIT_REPLIES; ContextLengthExceeded for messages that must stay
    whole and do not fit. A reply takes at most half the context window (the rest is for the conversation), its
    events are counted in the metrics, and its tokens in the usage of the person who asked. Returns the new reply, or
    the chat's reply that another request started meanwhile. The request's model (None: the default) must exist:
    UnknownModel, which each API answers in its way."""
    replies = service()
    model = replies.resolve(request.model)
    replies.ready(model)
    person = auth.current_person()
    usage.check_quota(person)
    limits.count_reply_start()
    options = request.options
    options = dataclasses.replace(options, max_tokens=min(options.max_tokens, replies.context_window(model) // 2))
    request = dataclasses.replace(request, model=model, options=options, on_event=usage.reply_events(person))
    return replies.start(request)


def stream(chat: Chat, mode: str, args: dict, last_event_id: str | None) -> Response:
    """Join the chat's running reply, resume one after Last-Event-ID, or start the next (404/409/503
    before any stream); 204 when there is nothing to send. With `replace` (regenerate), the next reply
    answers the history before that message and takes its place when it is saved."""
    reply = service().current(chat.id)  # the one look-up of the chat's reply (with Redis, a round trip)
    resume_after = reply.resumable_after(last_event_id) if reply else None
    if resume_after is not None:
        return event_stream_response(reply.listen(after=resume_after))
    conversations = chat.history()
    replace = args.get("replace")
    replaceable = bool(conversations) and conversations[-1].id == replace and conversations[-1].role == "Assistant"
    answered = conversations[:-1] if replaceable else conversations
    if not answer_is_wanted(answered, reply, last_event_id, args.get("after"), replace):
        return Response(status=204)  # tells EventSource not to reconnect
    if replace is not None and not replaceable:
        if conversations and conversations[-1].id == replace:
            abort(409, message=f"conversation {replace} is a Human message: only an Assistant answer is replaced")
        abort(409, message=f"conversation {replace} is not the last message of chat {chat.id}: only it is replaced")
    history = tuple(Message(c.role, c.message) for c in answered)
    if not any(m.role == "Human" for m in history):
        abort(409, message=f"chat {chat.id} has no Human message to answer")
    model = args.get("model") or chat.model
    try:
        service().resolve(model)
    except UnknownModel as exc:  # ?model= was checked with the query: the chat's own model, or the default, is gone
        if model is None:
            abort(503, message=f"the server's default model {exc.name!r} (CHATAPI_MODEL) is not on this server")
        abort(
            409,
            message=f"chat {chat.id}'s model {model!r} is not on this server any more: choose another "
            f"(PUT /chats/update/{chat.id} with a model from GET /models, or null for the server's default)",
        )
    if args.get("grammar"):
        try:
            service().check_grammar(model or service().resolve(None), args["grammar"])
        except UnsupportedSchema as exc:
            abort(422, message=f"invalid schema: {exc}")
    app = current_app._get_current_object()
    save, research = partial(save_reply, app), None
    if mode == "internet":
        web = WebResearch(app, next(m.text for m in reversed(history) if m.role == "Human"))
        save, research = web.save, web.research
    request = ReplyRequest(
        chat.id,
        mode,
        history,
        chat.system_prompt or app.config["CHATAPI_SYSTEM_PROMPT"],
        service().options_from(args),
        save,
        answering=answered[-1].id,
        replacing=replace,
        research=research,
        model=model,
        upstream=upstream_format(args),
    )
    return event_stream_response(start(request).listen())


def upstream_format(args: dict) -> dict | None:
    """?format=json and ?schema= as OpenAI's response_format, for a remote model server (which enforces it in place
    of our grammar); None for text."""
    if args.get("schema") is not None:
        schema = json.loads(args["schema"])  # read already: the grammar was made of it
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}}
    if args.get("format") == "json":
        return {"response_format": {"type": "json_object"}}
    return None


def answer_is_wanted(conversations: list[Conversation], last: Reply | None, last_event_id, after, replace) -> bool:
    """Whether a request that no reply can serve from memory should start one; `conversations` is the
    history the reply would answer (without the message it replaces).

    A plain request always does. A reconnect (Last-Event-ID naming a reply that is over, unknown, or
    from before a restart) and `after=<message id>` (a reloaded page) only do for a Human message that
    no reply has answered yet, so a reply delivered in full is never made twice, while a Human message
    added since the old reply is still answered. A regenerate (`replace`) counts as a reply of its own:
    the reply that wrote the replaced message does not stop it, a regenerate of that message that ended
    does (also one that saved nothing, so the old message stays).
    """
    if last_event_id is None and after is None:
        return True
    latest = conversations[-1] if conversations else None
    if latest is None or latest.role != "Human" or (after is not None and latest.id != after):
        return False
    return last is None or (last.answering, last.replacing) != (latest.id, replace)


def stop(chat_id: uuid.UUID) -> bool:
    """Stop the chat's running reply (its partial text is saved as cancelled); whether one was running."""
    return service().stop(chat_id)


def deleted(chat_id: uuid.UUID) -> None:
    """The chat was deleted: its running reply stops (its end finds the chat gone and saves nothing), and what the
    model kept of it on disk goes."""
    service().forget_chat(chat_id)


def running(chat_id: uuid.UUID) -> bool:
    """Whether a reply is being made for the chat."""
    return service().is_running(chat_id)


def forget(chat_id: uuid.UUID) -> None:
    """The chat's messages after one were deleted (an edit): what its last reply answered may be answered
    again."""
    service().forget(chat_id)


def save_reply(app: Flask, reply: Reply, sources: list[Source] | None = None) -> dict | None:
    """Store a finished reply as the chat's Assistant message, with the web sources its prompt cited (internet
    mode); the saved message, or None without text. A regenerate's message is deleted in the same transaction: a
    reply without text leaves it."""
    with app.app_context():
        try:
            chat = db.session.get(Chat, reply.chat_id)
            if chat is None:
                raise ChatGone
            if not reply.text:
                return None
            # Which sentence each source supports, found after the reply (also a cancelled one's part).
            citations = cite(reply.text, sources) if sources else None
            replaced = db.session.get(Conversation, reply.replacing) if reply.replacing else None
            if replaced is not None and replaced.chat_id == chat.id:
                db.session.delete(replaced)
            conversation = Conversation(
                chat=chat,
                role="Assistant",
                message=reply.text,
                id=reply.message_id,
                sources=[source.public() for source in sources] if sources else None,
                citations=citations,
                model=reply.model,
            )
            db.session.add(conversation)
            db.session.commit()
            return ConversationSchema().dump(conversation)
        except OperationalError as exc:  # the database is down or full: the stream ends with a 503 error event
            db.session.rollback()
            why = "the database's disk is full" if is_disk_full(exc) else "the database is unavailable"
            raise StoreUnavailable(f"{why}: the reply was not saved") from exc
        except Exception:
            db.session.rollback()
            raise
        finally:
            db.session.remove()


class WebResearch:
    """Internet mode's research for one reply, and the sources it found: they stay here, on the app's side, for
    the reply's `save`, which stores them with the message and cites them."""

    def __init__(self, app: Flask, question: str):
        self.app = app
        self.question = question
        self.sources: list[Source] = []  # with their passages, for the citations

    def research(self, reply: Reply, room: int) -> Researched:
        """Search and read the web for the question. The reply's listeners are told what was searched and found
        (`search`, then `warning` when something failed, then `sources` when pages were read); the reply gets the
        sources' text for its prompt, and how long each phase took."""
        settings, replies = self.app.extensions["web_settings"], self.app.extensions["replies"]
        count_tokens = partial(replies.count_tokens, reply.model)
        findings = gather(
            self.question, settings, room, count_tokens, lambda query: reply.publish("search", {"query": query})
        )
        self.sources = findings.sources
        if findings.warning:
            if not findings.sources:  # with sources, a search backend failed and the next one answered
                metrics.count_research_failure(self.app, findings.timings)
            failed = [failure.public() for failure in findings.failed]
            reply.publish("warning", {"message": findings.warning, "failed": failed})
        if findings.sources:
            reply.publish("sources", {"sources": [source.public() for source in findings.sources]})
        return Researched(findings.prompt(), findings.timings)

    def save(self, reply: Reply) -> dict | None:
        return save_reply(self.app, reply, self.sources)


def event_stream_response(chunks) -> Response:
    """A streaming response with the headers proxies and browsers need for SSE."""
    response = Response(chunks, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
