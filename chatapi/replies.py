"""The chats' replies as the API serves them: start, join or resume a reply's stream, stop it, save it.

This is the app's side of the model room (chatapi/llm): it reads and writes the database, runs internet
mode's research (chatapi/web) and publishes what it finds, and turns a reply into an HTTP response.
"""

import os
import uuid
from functools import partial

from flask import Flask, Response, current_app
from flask_smorest import abort
from sqlalchemy.exc import OperationalError

from . import limits, metrics
from .disk import is_disk_full
from .extensions import db
from .llm.prompt import Message
from .llm.reply import Reply
from .llm.service import ChatGone, QueueFull, ReplyService, Research, Settings, StoreUnavailable
from .models import Chat, Conversation
from .schemas import ConversationSchema
from .web.cite import cite
from .web.research import ResearchSettings, gather

# One service per model settings in a process (the tests make several apps with the same model).
_services: dict[Settings, ReplyService] = {}


def init_app(app: Flask) -> None:
    # Read at start, so that a search backend that cannot be used stops the server rather than a reply.
    app.extensions["web_settings"] = ResearchSettings.from_config(app.config)
    settings = Settings.from_config(app.config, os.path.join(app.instance_path, "models"))
    if settings not in _services:
        _services[settings] = ReplyService(settings)
    app.extensions["replies"] = _services[settings]


def service() -> ReplyService:
    """The reply service of the current app."""
    return current_app.extensions["replies"]


def ready_service() -> ReplyService:
    """The reply service with its model loaded; 503 while it is loading or failed (in either API's shape)."""
    replies = service()
    replies.load()
    if replies.status != "ok":  # why it failed (its words name paths) is in the log and in keyed /health
        message = "the model failed to load" if replies.status == "failed" else f"the model is {replies.status}"
        abort(503, message=message, code_name="model_not_ready")
    return replies


def stream(chat: Chat, mode: str, args: dict, last_event_id: str | None) -> Response:
    """Join the chat's running reply, resume one after Last-Event-ID, or start the next (404/409/503
    before any stream); 204 when there is nothing to send. With `replace` (regenerate), the next reply
    answers the history before that message and takes its place when it is saved."""
    replies = service()
    reply = replies.current(chat.id)
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
    history = [Message(c.role, c.message) for c in answered]
    if not any(m.role == "Human" for m in history):
        abort(409, message=f"chat {chat.id} has no Human message to answer")
    ready_service()
    config = current_app.config
    research = None
    if mode == "internet":
        question = next(m.text for m in reversed(history) if m.role == "Human")
        research = research_for(question, current_app.extensions["web_settings"], replies)
    limits.count_reply_start()
    try:
        reply = replies.start(
            chat.id,
            mode,
            history,
            chat.system_prompt or config["CHATAPI_SYSTEM_PROMPT"],
            replies.options_from(args),
            answering=answered[-1].id,
            save=partial(save_reply, current_app._get_current_object()),
            research=research,
            on_event=metrics.reply_events(),
            replacing=replace,
        )
    except QueueFull:
        abort(503, message="the model's queue is full", headers={"Retry-After": "5"})
    return event_stream_response(reply.listen())


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


def running(chat_id: uuid.UUID) -> bool:
    """Whether a reply is being made for the chat."""
    return service().is_running(chat_id)


def forget(chat_id: uuid.UUID) -> None:
    """The chat's messages after one were deleted (an edit): what its last reply answered may be answered
    again."""
    service().forget(chat_id)


def save_reply(app: Flask, reply: Reply) -> dict | None:
    """Store a finished reply as the chat's Assistant message; the saved message, or None without text.
    A regenerate's message is deleted in the same transaction: a reply without text leaves it."""
    with app.app_context():
        try:
            chat = db.session.get(Chat, reply.chat_id)
            if chat is None:
                raise ChatGone
            if not reply.text:
                return None
            # Which sentence each source supports, found after the reply (also a cancelled one's part).
            citations = cite(reply.text, reply.web_sources) if reply.web_sources else None
            replaced = db.session.get(Conversation, reply.replacing) if reply.replacing else None
            if replaced is not None and replaced.chat_id == chat.id:
                db.session.delete(replaced)
            conversation = Conversation(
                chat=chat,
                role="Assistant",
                message=reply.text,
                id=reply.message_id,
                sources=reply.sources,
                citations=citations,
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


def research_for(question: str, settings: ResearchSettings, replies: ReplyService) -> Research:
    """Internet mode's research step: it tells the reply's listeners what it searched and found
    (`search`, then `warning` when something failed, then `sources` when pages were read) and returns the
    sources' text for the prompt."""

    def research(reply: Reply, room: int) -> str:
        findings = gather(
            question, settings, room, replies.count_tokens, lambda query: reply.publish("search", {"query": query})
        )
        reply.research_timings = findings.timings
        if findings.sources:  # before the warning, whose listeners tell a fallback from research that failed
            reply.sources = [source.public() for source in findings.sources]
            reply.web_sources = findings.sources  # their passages, for the citations (save_reply)
        if findings.warning:
            failed = [failure.public() for failure in findings.failed]
            reply.publish("warning", {"message": findings.warning, "failed": failed})
        if findings.sources:
            reply.publish("sources", {"sources": reply.sources})
        return findings.prompt()

    return research


def event_stream_response(chunks) -> Response:
    """A streaming response with the headers proxies and browsers need for SSE."""
    response = Response(chunks, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
