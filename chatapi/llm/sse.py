"""Server-Sent Events as they go on the wire."""

import json

PING = ": ping\n\n"


def event_text(id: str, data: dict, event: str | None = None) -> str:
    """One event: an `id:` line, an optional `event:` line, and a JSON `data:` line."""
    lines = [f"id: {id}"]
    if event:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, ensure_ascii=False))
    return "\n".join(lines) + "\n\n"
