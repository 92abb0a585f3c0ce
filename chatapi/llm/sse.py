"""Server-Sent Events as they go on the wire."""

import json

PING = ": ping\n\n"


def event_text(id: str | None, data: dict, event: str | None = None) -> str:
    """One event: an `id:` line (none in a stream that cannot be resumed, as OpenAI's), an optional `event:` line,
    and a JSON `data:` line."""
    return serialized_event_text(id, json.dumps(data, ensure_ascii=False), event)


def serialized_event_text(id: str | None, data_json: str, event: str | None = None) -> str:
    """The same, with the data already serialized (as a Redis stream holds it: chatapi/llm/redis_replies.py)."""
    lines = [] if id is None else [f"id: {id}"]
    if event:
        lines.append(f"event: {event}")
    lines.append("data: " + data_json)
    return "\n".join(lines) + "\n\n"
