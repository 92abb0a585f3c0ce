"""gunicorn settings shared by `make run` and the Procfile."""

import ipaddress
import json
import logging
import os
import re
import socket
import sys

from gunicorn import glogging, util

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config import Config  # noqa: E402  (light: os only; the app itself is loaded in the worker)

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
# gevent: one process serves many slow clients (event streams) at once.
worker_class = "gevent"
worker_connections = 1000
# One process per box on the local backend: each worker would load its own copy of the model (on_starting refuses
# more). With a remote model server and Redis (docs/deploy.md), as many as the box serves.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
accesslog = "-"
# Share links' tokens are taken out of every line gunicorn logs: logger_class (RedactingLogger, at the end).
# The longest request line gunicorn reads (its default is 4,094 bytes): a reply's JSON Schema travels in the stream
# routes' query (?schema=, body-less for EventSource), URL-encoded.
limit_request_line = 8190
# X-Forwarded-* are believed in one place only, the app's ProxyFix (CHATAPI_TRUST_PROXY=1); gunicorn's own
# rule would believe any local client that says X-Forwarded-Proto: https.
secure_scheme_headers = {}

REFUSAL = """refusing to serve {where} without accounts or API keys: anyone who can reach it could read, change
and delete every chat. Either
  - make an admin: flask users create NAME --admin (then people sign in, and make keys of their own),
  - or set keys of 16 characters or more: CHATAPI_API_KEYS=KEY1,KEY2 or CHATAPI_API_KEYS_FILE=/path/to/keys
    (one a line),
    for example
    CHATAPI_API_KEYS="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
  - or serve 127.0.0.1 only (HOST=127.0.0.1, the default),
  - or, on a network you trust, CHATAPI_ALLOW_NO_AUTH=1."""


ONE_WORKER = """refusing to start {workers} workers (WEB_CONCURRENCY={workers}): {why}. Serve with one worker
(WEB_CONCURRENCY=1, the default): its gevent loop serves many clients at once, and CHATAPI_PARALLEL replies are
generated together."""

def why_one_worker() -> str | None:
    """Why this configuration cannot have several workers, or None when it can."""
    if Config.CHATAPI_LLM_BACKEND != "openai":
        return "each would load its own copy of the model (CHATAPI_LLM_BACKEND=local)"
    if not Config.CHATAPI_REDIS_URL:
        return (
            "without CHATAPI_REDIS_URL a reply lives in the memory of the worker that started it, so another could "
            "not resume or stop it (set CHATAPI_REDIS_URL to share replies through Redis)"
        )
    return None


def on_starting(server):
    """Before binding: one worker only unless the model is remote and replies go through Redis (ONE_WORKER); no
    accounts and no keys means loopback only, unless CHATAPI_ALLOW_NO_AUTH=1 (then a warning, every time)."""
    why = why_one_worker() if server.cfg.workers > 1 else None
    if why:
        server.log.error(ONE_WORKER.format(workers=server.cfg.workers, why=why))
        sys.exit(1)
    if Config.CHATAPI_API_KEYS:
        return
    exposed = [address for address in server.cfg.address if not local_only(address)]
    if not exposed or people_exist():
        return
    where = ", ".join(describe(address) for address in exposed)
    if not Config.CHATAPI_ALLOW_NO_AUTH:
        server.log.error(REFUSAL.format(where=where))
        sys.exit(1)
    server.log.warning(
        "serving %s WITHOUT API KEYS (CHATAPI_ALLOW_NO_AUTH=1), and nobody has an account: anyone who can reach it "
        "can read, change and delete every chat and use the model",
        where,
    )


def people_exist() -> bool:
    """Whether the database has a person (accounts are on); False when it cannot be read (not migrated yet)."""
    import sqlalchemy as sa  # only here: the rest of this file stays light

    engine = sa.create_engine(Config.SQLALCHEMY_DATABASE_URI)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT 1 FROM users LIMIT 1")).first() is not None
    except sa.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def local_only(address) -> bool:
    """A unix socket, or a host whose every address is a loopback one."""
    if isinstance(address, str | bytes):
        return True
    if not isinstance(address, tuple) or not address[0]:  # fd://N (made elsewhere), or every interface
        return False
    try:
        found = socket.getaddrinfo(address[0], None)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in found)


def describe(address) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


def post_worker_init(worker):
    """Serve the host gunicorn is bound to (`--bind chat.lan:5000`) besides the machine's own names (chatapi/guard.py);
    load the model as soon as the worker is up, in the background: /health says when it is ready."""
    worker.wsgi.extensions["guard"].allow_bound(worker.cfg.address)
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


# A share link's token in a path, a request line or a Referer: /s/<token> (also with its s or slash percent-encoded,
# which the app reads as an s and a slash).
SHARE_TOKEN = re.compile(r"(/(?:s|%73)(?:/|%2f))[^/?#\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    return SHARE_TOKEN.sub(r"\1…", text)


class RedactShareTokens(logging.Filter):
    """Writes a record's message with share links' tokens replaced by "…" (chatapi/shares.py): whoever reads the
    logs must not be able to open the chats shared."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the message: logging reports it itself
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class RedactingLogger(glogging.Logger):
    """gunicorn's logger, whose access log (the request line, the path, the Referer) and error log never write a
    share link's token, whatever handlers or format are configured: the filter is on the loggers themselves."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            if not any(isinstance(f, RedactShareTokens) for f in log.filters):
                log.addFilter(RedactShareTokens())


logger_class = RedactingLogger
