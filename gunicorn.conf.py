"""gunicorn settings shared by `make run` and the Procfile."""

import json
import os

from gunicorn import util

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
# gevent: one process serves many slow clients (event streams) at once.
worker_class = "gevent"
worker_connections = 1000
# One process per box: each worker would load its own copy of the model.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
accesslog = "-"


def post_worker_init(worker):
    """Load the model as soon as the worker is up, in the background: /health says when it is ready."""
    worker.wsgi.extensions["replies"].load()


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn answers a request it cannot hand to the app (a request line or headers too long, a malformed
    request) itself, with an HTML page: this writes the API's usual JSON error instead (CONTRACT.md)."""
    body = json.dumps({"code": status_int, "status": reason, "message": mesg}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = write_json_error  # the workers call it through the module
