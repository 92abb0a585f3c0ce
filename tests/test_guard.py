"""What a web page may make the owner's browser do to the server (chatapi/guard.py, issue 20), with keys or
without: the Host allow-list against DNS rebinding, the origin rule for requests that act, and JSON bodies only
under a JSON type (chatapi/openapi.py). In process; tests/page/test_browser.py has the same in a real browser."""

import json
import socket

import psutil
import pytest
import requests

from chatapi import create_app
from chatapi.guard import Guard
from tests.support.client import add_message, create_chat, snapshot
from tests.support.server import Server

LISTED = "https://app.example"
KEY = "guard-test-key-0123456789"
CHAT_FILE = {
    "chatapi_export": 1,
    "chat": {"name": "imported", "created_at": "2023-08-05T14:48:00Z", "updated_at": "2023-08-05T14:48:00Z"},
    "conversations": [],
}
COMPLETION = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
# What a browser sends for a page of another origin: recent browsers say so in Sec-Fetch-Site (and in Origin
# unless it is a GET or HEAD); older ones in Origin only; "null" is a sandboxed frame or a data: page.
FROM_ELSEWHERE = [
    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "cross-site"},  # a no-cors GET (an EventSource, an <img>) names no Origin
    {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:3000"},  # another port of this host
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},  # Sec-Fetch-Site decides when given
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://["},  # nonsense is from elsewhere too, never a 500
]
# What the page itself (same-origin), an address typed in (none), and clients that are no browser send.
FROM_HERE = [{"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {"Origin": "http://localhost"}, {}]


@pytest.fixture
def make_app(database_url):
    """Makes apps with other settings in this process. The one Api object (chatapi.extensions.api) serves the
    document of the app made last: the default one is made again afterwards, for the tests that follow."""

    def make(**settings):
        return create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, **settings})

    yield make
    make()


def seeded(client) -> tuple[str, str]:
    chat = create_chat(client, "guarded")
    return chat["id"], add_message(client, chat["id"], "What is the capital of France?")["id"]


def acting_requests(chat_id: str, message_id: str) -> list[tuple[str, str, dict | None]]:
    """One request of each kind that changes something or starts a reply."""
    return [
        ("POST", "/chats/create", {"name": "forged"}),
        ("POST", "/conversations/create", {"chat_id": chat_id, "role": "Human", "message": "forged"}),
        ("PUT", f"/chats/update/{chat_id}", {"name": "forged"}),
        ("PUT", f"/conversations/update/{message_id}", {"message": "forged"}),
        ("POST", "/chats/import", CHAT_FILE),
        ("POST", f"/conversations/stop/{chat_id}", None),
        ("DELETE", f"/chats/{chat_id}/conversations?after={message_id}", None),
        ("DELETE", f"/conversations/delete/{message_id}", None),
        ("DELETE", f"/chats/delete/{chat_id}", None),
        ("GET", f"/conversations/inference/{chat_id}?max_tokens=1", None),
        ("GET", f"/conversations/inference_internet/{chat_id}?max_tokens=1&replace={message_id}", None),
        ("POST", "/v1/chat/completions", COMPLETION),
    ]


def check_refused(response, message: str) -> None:
    assert response.status_code == 403, (response.request.method, response.request.path, response.text)
    assert response.content_type == "application/json"
    body = response.json
    if "error" in body:  # /v1 speaks OpenAI's shape
        assert body["error"]["type"] == "permission_error" and message in body["error"]["message"]
    else:
        assert body["code"] == 403 and body["status"] == "Forbidden" and message in body["message"]


# Host


def test_a_foreign_host_is_refused_before_any_route(app, client):
    chat_id, message_id = seeded(client)
    before = snapshot(app)
    paths = [
        "/health",
        "/",
        "/static/app.css",
        "/docs",
        "/docs/assets/swagger-ui.css",
        "/openapi.json",
        "/chats/",
        f"/chats/{chat_id}",
        "/metrics",
        "/v1/models",
        "/no/such/route",
    ]
    for host in ("rebind.test", "rebind.test:5000", "localhost.rebind.test", "127.0.0.1.nip.io:5000", "[::2]:5000"):
        for path in paths:
            check_refused(client.get(path, headers={"Host": host}), "does not answer to that host name")
        for method, path, body in acting_requests(chat_id, message_id):
            response = client.open(path, method=method, json=body, headers={"Host": host})
            check_refused(response, "does not answer to that host name")
        check_refused(client.options("/chats/create", headers={"Host": host}), "CHATAPI_ALLOWED_HOSTS")
    assert snapshot(app) == before


def test_the_machines_own_names_and_addresses_are_served(client):
    interface_addresses = [
        address.address.split("%")[0]
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family in (socket.AF_INET, socket.AF_INET6)
    ]
    own = [
        "localhost",
        "localhost:5000",
        "LocalHost:80",
        "localhost.",
        "127.0.0.1",
        "127.0.0.1:8080",
        "[::1]",
        "[::1]:5000",
        socket.gethostname(),
        f"{socket.gethostname()}:5000",
        *(f"[{address}]:5000" if ":" in address else f"{address}:5000" for address in interface_addresses),
    ]
    for host in own:
        response = client.get("/chats/", headers={"Host": host})
        assert response.status_code == 200, (host, response.json)


def test_allowed_hosts_adds_names_and_a_star_serves_any(make_app, client):
    allowing = make_app(CHATAPI_ALLOWED_HOSTS=" chat.example.org , [fd00::5]:8443,lan-box").test_client()
    for host in (
        "chat.example.org",
        "CHAT.example.org:443",
        "[fd00::5]",
        "[fd00::5]:8443",
        "lan-box:5000",
        "localhost",
    ):
        assert allowing.get("/chats/", headers={"Host": host}).status_code == 200, host
    for host in ("example.org", "evil.chat.example.org", "[fd00::6]", "rebind.test"):
        check_refused(allowing.get("/chats/", headers={"Host": host}), "CHATAPI_ALLOWED_HOSTS")

    anything = make_app(CHATAPI_ALLOWED_HOSTS="*").test_client()
    assert anything.get("/chats/", headers={"Host": "rebind.test:5000"}).status_code == 200


def test_behind_a_trusted_proxy_the_host_checked_is_the_one_the_proxy_was_asked_for(make_app, client):
    """CHATAPI_TRUST_PROXY: X-Forwarded-Host is what the browser sent to the proxy (deploy/nginx.conf)."""
    proxied = make_app(CHATAPI_TRUST_PROXY=True, CHATAPI_ALLOWED_HOSTS="chat.example.org").test_client()
    assert proxied.get("/chats/", headers={"X-Forwarded-Host": "chat.example.org"}).status_code == 200
    check_refused(proxied.get("/chats/", headers={"X-Forwarded-Host": "rebind.test"}), "CHATAPI_ALLOWED_HOSTS")
    # Not trusted, the header is nobody's word: the Host is.
    direct = make_app().test_client()
    assert direct.get("/chats/", headers={"X-Forwarded-Host": "rebind.test"}).status_code == 200


@pytest.mark.parametrize("setting", ["https://chat.example.org", "chat.example.org/", "a b", "[::1", "*.example.org"])
def test_an_allowed_host_that_is_no_host_name_stops_the_app(make_app, setting):
    with pytest.raises(ValueError, match="CHATAPI_ALLOWED_HOSTS"):
        make_app(CHATAPI_ALLOWED_HOSTS=setting)


def test_the_host_gunicorn_is_bound_to_is_served(tmp_path):
    """`--bind 127.0.0.2:PORT`: an address of no interface (lo holds 127.0.0.1/8), served since gunicorn binds it
    (gunicorn.conf.py's post_worker_init); wildcards and unix sockets add nothing."""
    guard = Guard("", "")
    assert "127.0.0.2" not in guard.hosts
    guard.allow_bound([("0.0.0.0", 5000), ("::", 5000), ("", 5000), "/run/chatapi.sock", ("chat.lan", 5000)])
    assert guard.serves("chat.lan:5000") and not guard.serves("0.0.0.0:5000") and not guard.serves("[::]:5000")

    server = Server(f"sqlite:///{tmp_path}/chatapi.db", tmp_path / "gunicorn.log", bind_host="127.0.0.2")
    server.url = f"http://127.0.0.2:{server.port}"
    try:
        server.wait_until_up()  # GET /health at 127.0.0.2:PORT answered 200
        assert requests.get(f"{server.url}/openapi.json", timeout=10).status_code == 200
        foreign = requests.get(f"{server.url}/openapi.json", headers={"Host": "rebind.test"}, timeout=10)
        assert foreign.status_code == 403
    finally:
        server.stop()


# Where a request comes from


def test_requests_that_act_from_another_origin_are_refused(app, client):
    chat_id, message_id = seeded(client)
    before = snapshot(app)
    for headers in FROM_ELSEWHERE:
        for method, path, body in acting_requests(chat_id, message_id):
            response = client.open(path, method=method, json=body, headers=headers)
            check_refused(response, "from another site")
    assert snapshot(app) == before

    # Reading is allowed: the browser keeps the answer from the other page (CORS is off).
    for headers in FROM_ELSEWHERE:
        assert client.get(f"/chats/{chat_id}/conversations", headers=headers).status_code == 200
        assert client.head("/chats/", headers=headers).status_code == 200


def test_the_page_and_clients_that_are_no_browser_may_act(app, client):
    for headers in FROM_HERE:
        chat_id, message_id = seeded(client)
        for method, path, body in acting_requests(chat_id, message_id):
            response = client.open(path, method=method, json=body, headers=headers)
            # Not refused for where it came from; what it does then is the route's (a stream needs the model,
            # which this process has not loaded: 503; the chat deleted before it: 404).
            assert response.status_code in (200, 201, 404, 503), (headers, method, path, response.json)
    renamed = client.put(
        f"/chats/update/{create_chat(client)['id']}", json={"name": "from the page"}, headers=FROM_HERE[0]
    )
    assert renamed.status_code == 200 and renamed.json["name"] == "from the page"


def test_a_listed_cors_origin_may_act_without_the_session_cookie(make_app, client):
    cors = make_app(CHATAPI_CORS_ORIGINS=f"{LISTED}/").test_client()
    listed = {"Sec-Fetch-Site": "cross-site", "Origin": LISTED}
    created = cors.post("/chats/create", json={"name": "from a listed origin"}, headers=listed)
    assert created.status_code == 201
    check_refused(cors.post("/chats/create", json={"name": "x"}, headers=FROM_ELSEWHERE[0]), "another site")
    # Listed or not, a no-cors request names no Origin, and a listed origin never acts with the session cookie.
    chat_id = created.json["id"]
    check_refused(cors.get(f"/conversations/inference/{chat_id}", headers={"Sec-Fetch-Site": "cross-site"}), "site")
    cors.set_cookie("chatapi_session", "anything")
    check_refused(cors.put(f"/chats/update/{chat_id}", json={"name": "x"}, headers=listed), "another site")


def test_a_bearer_key_is_no_browsers_doing(make_app, client):
    """A browser adds Authorization to no request by itself, and to one across origins only after a preflight
    CORS allowed: the request was written by whoever holds the key. Basic credentials a browser does keep."""
    evil = FROM_ELSEWHERE[0]
    # Without keys as well (the SDKs send one anyway): first, while nobody exists (the keys below make their admin).
    assert (
        client.post("/chats/create", json={"name": "sdk"}, headers={**evil, "Authorization": "Bearer x"}).status_code
        == 201
    )
    keyed = make_app(CHATAPI_API_KEYS=(KEY,)).test_client()
    created = keyed.post("/chats/create", json={"name": "by key"}, headers={**evil, "Authorization": f"Bearer {KEY}"})
    assert created.status_code == 201
    wrong = keyed.post("/chats/create", json={"name": "x"}, headers={**evil, "Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    basic = keyed.post("/chats/create", json={"name": "x"}, headers={**evil, "Authorization": "Basic dTpw"})
    check_refused(basic, "another site")


def test_signing_in_from_another_site_is_refused(make_app, client):
    keyed = make_app(CHATAPI_API_KEYS=(KEY,)).test_client()
    check_refused(keyed.post("/session", json={"key": KEY}, headers=FROM_ELSEWHERE[0]), "another site")
    assert keyed.post("/session", json={"key": KEY}, headers=FROM_HERE[0]).status_code == 204


# Bodies


BODY_ROUTES = [
    ("POST", "/chats/create", {"name": "typed"}),
    ("PUT", "/chats/update/{chat_id}", {"name": "typed"}),
    ("POST", "/conversations/create", {"chat_id": "{chat_id}", "role": "Human", "message": "typed"}),
    ("PUT", "/conversations/update/{message_id}", {"message": "typed"}),
    ("POST", "/chats/import", CHAT_FILE),
    ("POST", "/v1/chat/completions", COMPLETION),
]
# What a page may send to any server without a preflight (a form or fetch's no-cors), and others.
NOT_JSON_TYPES = [
    "text/plain",
    "text/plain;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonp",
    "text/json",
    None,
]
JSON_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json"]


def body_requests(client) -> list[tuple[str, str, str]]:
    chat_id, message_id = seeded(client)
    return [
        (method, path.format(chat_id=chat_id, message_id=message_id), json.dumps(body).replace("{chat_id}", chat_id))
        for method, path, body in BODY_ROUTES
    ]


def test_a_body_not_sent_as_json_is_a_415(app, client, make_app):
    requests_ = body_requests(client)
    before = snapshot(app)
    for content_type in NOT_JSON_TYPES:
        for method, path, body in requests_:
            headers = {"Content-Type": content_type} if content_type else {}
            response = client.open(path, method=method, data=body.encode(), headers=headers)
            assert response.status_code == 415, (content_type, method, path, response.json)
            message = response.json["error"]["message"] if path.startswith("/v1") else response.json["message"]
            assert message == "send the request body as JSON, with Content-Type: application/json"
    assert snapshot(app) == before

    keyed = make_app(CHATAPI_API_KEYS=(KEY,)).test_client()
    signed_in = keyed.post("/session", data=json.dumps({"key": KEY}), content_type="text/plain")
    assert signed_in.status_code == 415 and "Set-Cookie" not in signed_in.headers


def test_a_body_sent_as_json_is_read(client):
    for content_type in JSON_TYPES:
        for method, path, body in body_requests(client):
            if path.startswith("/v1"):
                continue  # needs the model: tests/test_openai.py
            response = client.open(path, method=method, data=body.encode(), content_type=content_type)
            assert response.status_code in (200, 201), (content_type, method, path, response.json)


def test_the_document_names_403_and_415(client):
    spec = client.get("/openapi.json").json
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            assert "403" in operation["responses"], (method, path)
            assert ("415" in operation["responses"]) == ("requestBody" in operation), (method, path)
