"""What a browser may make this server do for a web page, whether API keys are on or not: the one place that
checks the Host a request names and the origin a browser says it comes from, before anything else runs (the
routes, static files and /health, authentication and rate limits).

- **Host.** A web page cannot reach a server on another origin, unless the name in its address is the
  attacker's own and resolves to this machine (DNS rebinding): then the browser sends that name as the Host.
  So only this machine's names and addresses are served (loopback, its host name, its interfaces' addresses,
  the address gunicorn is bound to) and those in CHATAPI_ALLOWED_HOSTS (a proxy's public name, a LAN name);
  `*` turns the check off. Any port.
- **Origin.** Any page can make the browser send a request whose answer it cannot read (a form, or fetch with
  mode "no-cors" and a text/plain body): no preflight asks first. So a request that changes something (every
  method but GET, HEAD and OPTIONS), or that starts a reply (the stream routes: a GET that generates and saves,
  and `replace` deletes), is refused when the browser says it comes from another origin, unless that origin is
  one of CHATAPI_CORS_ORIGINS and the request carries no session cookie (a listed origin never acts with a
  visitor's session: chatapi/cors.py). Clients that are no browser (curl, Postman, the SDKs) send neither
  header, and a request with `Authorization: Bearer` was written by whoever holds the key (a browser adds it
  to no request by itself, and across origins only after a preflight CORS allowed).
"""

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import psutil
from flask import Flask, current_app, request
from flask_smorest import abort

from .auth import COOKIE
from .cors import origins_from

# Methods that change nothing; other routes that act all the same: a GET that starts a reply and saves it.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STREAM_ENDPOINTS = frozenset({"conversations.inference", "conversations.inference_internet"})
# Sec-Fetch-Site values a browser sends for the page's own requests, and for an address typed in or bookmarked.
OWN_SITE = frozenset({"same-origin", "none"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"
# An entry of CHATAPI_ALLOWED_HOSTS: a name or IPv4 address, or an IPv6 one in brackets, and maybe a port.
HOST_ENTRY = re.compile(r"([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]+)?", re.ASCII | re.IGNORECASE)


def host_name(host: str) -> str | None:
    """The name or address of a `host[:port]` (a Host header, werkzeug's request.host, a setting's entry),
    without port, IPv6 brackets or a final dot, in lower case; None when there is none ("", "[::1")."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def machine_hosts() -> set[str]:
    """This machine's names and addresses: loopback, its host name (and the name before its first dot), and
    the addresses of its network interfaces (read from the kernel: no DNS lookup)."""
    names = set(LOOPBACK_NAMES)
    hostname = socket.gethostname().lower()
    names.update({hostname, hostname.split(".")[0]} - {""})
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                names.add(address.address.split("%")[0].lower())  # fe80::1%eth0: the zone is no part of a Host
    return names


def hosts_from(setting: str) -> set[str]:
    """The names of CHATAPI_ALLOWED_HOSTS (comma-separated, as in a URL: `chat.example.org`, `[fd00::5]`, a
    port allowed and ignored); a value that names no host stops the app at start."""
    names = set()
    for entry in (part.strip() for part in setting.split(",")):
        if not entry:
            continue
        name = host_name(entry)
        if name is None or not HOST_ENTRY.fullmatch(entry):
            raise ValueError(f"CHATAPI_ALLOWED_HOSTS: {entry!r} is not a host name (chat.example.org, 192.0.2.7)")
        names.add(name)
    return names


class Guard:
    """The hosts served (None: any) and the origins listed in CHATAPI_CORS_ORIGINS."""

    def __init__(self, allowed_hosts: str, cors_origins: str):
        setting = {part.strip() for part in allowed_hosts.split(",")}
        self.hosts: set[str] | None = None if ANY_HOST in setting else machine_hosts() | hosts_from(allowed_hosts)
        self.cors_origins = frozenset(origin.lower() for origin in origins_from(cors_origins))

    def allow_bound(self, addresses: Iterable) -> None:
        """Serve the hosts gunicorn is bound to as well (gunicorn.conf.py: `--bind chat.lan:5000`), but for a
        wildcard (0.0.0.0, ::) or a unix socket."""
        for address in addresses:
            if self.hosts is None or not isinstance(address, tuple) or not address[0]:
                continue
            name = address[0].lower()
            try:
                if ipaddress.ip_address(name).is_unspecified:
                    continue
            except ValueError:
                pass  # a name
            self.hosts.add(name)

    def serves(self, host: str) -> bool:
        return self.hosts is None or host_name(host) in self.hosts

    def listed(self, origin: str | None) -> bool:
        return origin is not None and origin.rstrip("/").lower() in self.cors_origins


def init_app(app: Flask) -> None:
    """Call it before any other extension registers a request hook: nothing may run for a refused request."""
    app.extensions["guard"] = Guard(app.config["CHATAPI_ALLOWED_HOSTS"], app.config["CHATAPI_CORS_ORIGINS"])
    app.before_request(check_request)


def from_another_origin() -> bool:
    """Whether the browser says the request comes from a page of another origin: Sec-Fetch-Site (recent
    browsers, on every request), else Origin (older ones, on requests that are not GET). A client that sends
    neither is no browser, or a browser on this server's own page."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site not in OWN_SITE
    origin = request.headers.get("Origin")
    # The host only: behind a TLS proxy without CHATAPI_TRUST_PROXY the app sees http for an https page.
    return origin is not None and origin_host(origin) != request.host.lower()


def origin_host(origin: str) -> str | None:
    """An Origin's host[:port] in lower case; None for "null" (a sandboxed frame, a data: page) or nonsense."""
    try:
        return urlsplit(origin).netloc.lower() or None
    except ValueError:
        return None


def acts() -> bool:
    """Whether the request changes something or starts a reply."""
    return request.method not in SAFE_METHODS or request.endpoint in STREAM_ENDPOINTS


def check_request() -> None:
    """Before every request: a Host this server does not answer to is a 403; so is a request that acts, from a
    page of another origin that CHATAPI_CORS_ORIGINS does not list (or that sends the session cookie)."""
    guard: Guard = current_app.extensions["guard"]
    if not guard.serves(request.host):
        abort(403, message="this server does not answer to that host name: if it is one of its names, add it to "
              "CHATAPI_ALLOWED_HOSTS")
    if not acts() or not from_another_origin():
        return
    if request.headers.get("Authorization", "").lower().startswith("bearer "):
        return
    if guard.listed(request.headers.get("Origin")) and COOKIE not in request.cookies:
        return
    abort(403, message="a request from another site may not change anything here or start a reply")
