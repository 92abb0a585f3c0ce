"""A reply told as OpenAI tells a chat completion: one `chat.completion` object, or a stream of
`chat.completion.chunk` events (written through chatapi/llm/sse.py) that ends with `[DONE]`.

With tools offered, this is the one place a reply's text is read for tool calls (chatapi/llm/tool_calls.py), whether
the local model wrote them or a remote server's were made text: they become `message.tool_calls` (streamed as
`delta.tool_calls`, a call's id and name, then its arguments in fragments) with `finish_reason: "tool_calls"`. While
streamed text may be the start of a call it is held back; the rest streams as it comes."""

import json
import time
import uuid
from collections.abc import Iterator

from flask_smorest import abort

from ..llm import sse
from ..llm.queue import ReplyService
from ..llm.reply import Reply
from ..llm.tool_calls import ToolCall, held_from, parse

FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}
DONE = sse.serialized_event_text(None, "[DONE]")  # the stream's last event, OpenAI's: its data is no JSON
ARGUMENTS_FRAGMENT = 32  # characters of a call's arguments a streamed chunk carries


def tool_calls(calls: list[ToolCall]) -> list[dict]:
    """Calls as OpenAI's `tool_calls`, each with an id of its own and its arguments as a JSON string."""
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
        }
        for call in calls
    ]


def usage(done: dict) -> dict:
    """OpenAI's usage of a reply's `done`; its counts None where the backend knows none (a remote server that
    reports none)."""
    counts = done["usage"]
    prompt, completion = counts["prompt_tokens"], counts["completion_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion if prompt is not None and completion is not None else None,
        "prompt_tokens_details": {"cached_tokens": counts["cached_tokens"]},
    }


def finished_text(texts_and_end: Iterator[tuple[str | None, dict | None]]) -> tuple[str, dict]:
    """A reply listened to its end: its text and its `done` data; its error aborts the request in OpenAI's shape."""
    pieces, end = [], None
    for text, ended in texts_and_end:
        if text:
            pieces.append(text)
        end = ended or end
    if end["event"] == "error":
        abort(end["code"], message=end["message"])
    return "".join(pieces), end


def error_event(end: dict) -> str:
    """A reply's `error` as the event OpenAI's streams end with when they fail."""
    kind = "server_error" if end["code"] >= 500 else "invalid_request_error"
    return sse.event_text(None, {"error": {"message": end["message"], "type": kind, "param": None, "code": None}})


class Completion:
    """One reply told as OpenAI tells a chat completion."""

    def __init__(self, reply: Reply, model: str, tool_names: dict[str, dict | None] | None = None):
        self.reply = reply
        # the tools offered whose calls are read from the text, by name, with the parameters calls must validate
        self.tool_names = tool_names or {}
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

    def whole(self):
        """The finished reply as a `chat.completion` (or its error in OpenAI's shape)."""
        text, end = finished_text(self.texts_and_end(self.reply.listen(records=True)))
        finish_reason = FINISH_REASONS[end["finish_reason"]]
        message = {"role": "assistant", "content": text, "refusal": None}
        content, calls = parse(message["content"], self.tool_names) if self.tool_names else ("", [])
        if calls:
            message.update(content=content or None, tool_calls=tool_calls(calls))
            finish_reason = "tool_calls"
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage(end),
        }

    def chunk(self, delta: dict, finish_reason: str | None = None, include_usage: bool = False) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self.event({"choices": [choice], **({"usage": None} if include_usage else {})})

    def event(self, fields: dict) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return sse.event_text(None, {**body, **fields})  # no id: nobody can resume it

    def tool_call_deltas(self, calls: list[ToolCall]) -> Iterator[dict]:
        """Calls as OpenAI streams them: each call's index, id and name, then its arguments in fragments."""
        for index, call in enumerate(tool_calls(calls)):
            function = call["function"]
            yield {"tool_calls": [{"index": index, **call, "function": {"name": function["name"], "arguments": ""}}]}
            arguments = function["arguments"]
            for at in range(0, len(arguments), ARGUMENTS_FRAGMENT):
                fragment = arguments[at : at + ARGUMENTS_FRAGMENT]
                yield {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}

    def chunks(self, service: ReplyService, include_usage: bool) -> Iterator[str]:
        """The reply as OpenAI's stream: a chunk with the role, one per text piece, one with the finish reason,
        the usage when asked, then [DONE]. A client that leaves cancels the reply at once: nobody can come back
        for it."""
        held = ""  # text that may be the start of a tool call, held back
        streamed = False  # whether text was streamed: a bare JSON call is a whole reply
        try:
            yield self.chunk({"role": "assistant", "content": ""}, include_usage=include_usage)
            for text, end in self.texts_and_end(self.reply.listen(records=True)):
                if text and self.tool_names:
                    held += text
                    at = held_from(held, streamed)
                    if at:
                        streamed = True
                        yield self.chunk({"content": held[:at]}, include_usage=include_usage)
                        held = held[at:]
                elif text:
                    yield self.chunk({"content": text}, include_usage=include_usage)
                elif end is None:
                    yield sse.PING
                elif end["event"] == "error":
                    if held:  # what was held back as a possible call is text: the call never came whole
                        yield self.chunk({"content": held}, include_usage=include_usage)
                    yield error_event(end)
                    return
                else:
                    finish_reason = FINISH_REASONS[end["finish_reason"]]
                    if held:
                        content, calls = parse(held, self.tool_names)
                        if content:
                            yield self.chunk({"content": content}, include_usage=include_usage)
                        for delta in self.tool_call_deltas(calls):
                            yield self.chunk(delta, include_usage=include_usage)
                        finish_reason = "tool_calls" if calls else finish_reason
                    yield self.chunk({}, finish_reason, include_usage)
                    if include_usage:
                        yield self.event({"choices": [], "usage": usage(end)})
            yield DONE
        finally:
            if not self.reply.finished:
                service.cancel(self.reply)
