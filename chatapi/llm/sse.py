"""Server-Sent Events: one message class, and the response that streams a generation."""

import json

from flask import Response

PING = ": ping\n\n"


class ServerSentEvent:
    """One event, rendered once: `id:`, optional `event:`, and a JSON `data:` line."""

    def __init__(self, id: str, data: dict, event: str | None = None):
        self.id = id
        self.event = event
        self.data = data
        lines = [f"id: {id}"]
        if event:
            lines.append(f"event: {event}")
        lines.append("data: " + json.dumps(data, ensure_ascii=False))
        self.text = "\n".join(lines) + "\n\n"

    def __str__(self) -> str:
        return self.text


def event_stream_response(chunks) -> Response:
    """A streaming response with the headers proxies and browsers need for SSE."""
    response = Response(chunks, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
