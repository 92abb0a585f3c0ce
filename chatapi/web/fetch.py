"""Fetch one web page safely: public addresses only, few redirects, a deadline, a size cap.

Addresses are checked when the host is resolved and again on the socket actually connected
(so a DNS answer that changes between the two cannot reach a private address), at every hop.
"""

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlparse

import requests
import urllib3
from requests.adapters import HTTPAdapter

from .search import USER_AGENT

MAX_REDIRECTS = 5
MAX_BYTES = 2 * 1024 * 1024
READABLE_TYPES = ("text/html", "application/xhtml+xml", "text/plain")


class FetchError(Exception):
    """The page was not read; the message says why."""


@dataclass
class Page:
    url: str  # after redirects
    content_type: str  # text/html or text/plain
    charset: str | None
    body: bytes  # at most the cap: a longer page is cut there


# IPv6 forms that carry an IPv4 address in their last 32 bits (RFC 4291, 6052, 6145, 8215).
IPV4_IN_LAST_32_BITS = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        "::ffff:0:0/96",  # IPv4-mapped
        "::ffff:0:0:0/96",  # SIIT (IPv4-translated)
        "64:ff9b::/96",  # NAT64, the well-known prefix
        "64:ff9b:1::/96",  # NAT64, the local-use prefix at the usual length
        "::/96",  # IPv4-compatible (deprecated); :: and ::1 are 0.0.0.0 and 0.0.0.1 inside, never public
    )
)
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
NAT64_LOCAL_96 = ipaddress.IPv6Network("64:ff9b:1::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses an IPv6 address carries, or None for a plain IPv6 address: 6to4's (2002::/16, bits 16
    to 48), Teredo's server and client (2001::/32; the client's inverted in the last 32 bits), or the last 32 bits
    of the forms of IPV4_IN_LAST_32_BITS."""
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo
    if any(ip in network for network in IPV4_IN_LAST_32_BITS):
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    return None


class AddressPolicy:
    """Only public addresses, except hosts and networks listed in CHATAPI_FETCH_ALLOW."""

    def __init__(self, allow: str = ""):
        self.allow = allow
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow.replace(",", " ").split():
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower())

    def allows(self, host: str, address: str) -> bool:
        """Whether the host may be fetched at the address: a listed host or network, else a public address. An
        IPv6 address that carries an IPv4 one is judged by the IPv4 address(es) inside: a NAT64 gateway, a 6to4
        or Teredo relay or the system's own mapping would take the request there."""
        if host.lower() in self.hosts:
            return True
        ip = ipaddress.ip_address(address.split("%")[0])
        if any(ip in network for network in self.networks):
            return True
        if isinstance(ip, ipaddress.IPv4Address):
            return self.allows_ipv4(ip)
        if ip in NAT64_LOCAL and ip not in NAT64_LOCAL_96:
            return False  # an operator's own NAT64 prefix of another length: the IPv4 address inside is unknown
        inside = embedded_ipv4(ip)
        if inside is not None:
            return all(self.allows_ipv4(v4) for v4 in inside)
        return ip.is_global and not ip.is_multicast and not ip.is_site_local

    def allows_ipv4(self, ip: ipaddress.IPv4Address) -> bool:
        return any(ip in network for network in self.networks) or (ip.is_global and not ip.is_multicast)

    def check_host(self, host: str, port: int) -> None:
        """Resolve the host; every address it has must be allowed."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError(f"{host} could not be resolved") from exc
        for *_, sockaddr in infos:
            if not self.allows(host, sockaddr[0]):
                raise FetchError(f"{host} resolves to a non-public address ({sockaddr[0]})")


def guarded_adapter(policy: AddressPolicy) -> HTTPAdapter:
    """A requests adapter whose connections refuse a peer address the policy does not allow."""

    def checked(connection_class):
        class Checked(connection_class):
            def _new_conn(self):
                sock = super()._new_conn()
                peer = sock.getpeername()[0]
                if not policy.allows(self.host, peer):
                    sock.close()
                    raise urllib3.exceptions.NewConnectionError(self, f"connected to a non-public address {peer}")
                return sock

        return Checked

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            # A new dict: urllib3's default one is shared by every pool manager in the process.
            self.poolmanager.pool_classes_by_scheme = {
                scheme: type(f"Guarded{pool.__name__}", (pool,), {"ConnectionCls": checked(pool.ConnectionCls)})
                for scheme, pool in (("http", urllib3.HTTPConnectionPool), ("https", urllib3.HTTPSConnectionPool))
            }

    return Adapter()


def fetch_page(url: str, policy: AddressPolicy, timeout: float, max_bytes: int = MAX_BYTES) -> Page:
    """The page at url (HTML or plain text), read within `timeout` seconds in all; FetchError otherwise."""
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        session.trust_env = False  # no proxies from the environment: the checks must see the real peer
        adapter = guarded_adapter(policy)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        for _ in range(MAX_REDIRECTS + 1):
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise FetchError(f"not an http(s) URL: {url}")
            policy.check_host(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
            response = request(session, url, deadline)
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                url = urljoin(url, location)
                continue
            with response:
                return read_body(response, url, deadline, max_bytes)
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def request(session: requests.Session, url: str, deadline: float) -> requests.Response:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError("the page took too long")
    try:
        return session.get(
            url,
            stream=True,
            allow_redirects=False,
            timeout=remaining,
            headers={"User-Agent": USER_AGENT, "Accept": "text/html, text/plain;q=0.9"},
        )
    except requests.RequestException as exc:
        raise FetchError(f"the page could not be fetched ({type(exc).__name__}: {exc})") from exc


def read_body(response: requests.Response, url: str, deadline: float, max_bytes: int) -> Page:
    """The response's body as a Page: a readable type only, read by the deadline, cut at max_bytes."""
    if response.status_code != 200:
        raise FetchError(f"the page answered {response.status_code}")
    header = response.headers.get("Content-Type", "")
    content_type = header.split(";")[0].strip().lower()
    if content_type and content_type not in READABLE_TYPES:
        raise FetchError(f"not a readable page ({content_type})")
    body = bytearray()
    raw = response.raw
    while True:
        if time.monotonic() > deadline:
            raise FetchError("the page took too long")
        try:
            # read1 returns what has arrived, so a page that drips slowly still meets the deadline.
            chunk = raw.read1(65536, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise FetchError(f"the page could not be read ({type(exc).__name__})") from exc
        if not chunk:
            break
        body += chunk
        if len(body) > max_bytes:
            del body[max_bytes:]
            break
    if not content_type:  # no header: sniff, and never pass binary on
        if b"\x00" in body[:1024]:
            raise FetchError("not a readable page (binary)")
        content_type = "text/html" if body.lstrip()[:1] == b"<" else "text/plain"
    declared = "charset=" in header.lower()
    return Page(url, content_type, response.encoding if declared else None, bytes(body))
