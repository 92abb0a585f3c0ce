"""CORS (CHATAPI_CORS_ORIGINS) on the real server: off by default, the listed origins only, streams included."""

import requests

from tests.support.chats import GREEDY, QUESTION, infer, new_chat

ALLOWED = "https://app.example"
OTHER = "https://elsewhere.example"


def preflight(base: str, path: str, origin: str, method: str, headers: str) -> requests.Response:
    return requests.options(
        f"{base}{path}",
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
        timeout=10,
    )


def cors_headers(response: requests.Response) -> dict:
    return {name: value for name, value in response.headers.items() if name.lower().startswith("access-control-")}


def test_listed_origins_may_call_the_api_and_read_the_streams(start_server, client):
    # A trailing slash and blanks, as people write them, are forgiven.
    base = start_server(CHATAPI_CORS_ORIGINS=f" {ALLOWED}/ , http://localhost:3000").url
    allowed = preflight(base, "/chats/create", ALLOWED, "POST", "authorization, content-type")
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert set(allowed.headers["Access-Control-Allow-Headers"].split(", ")) == {"authorization", "content-type"}
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    # No credentials across origins: pages elsewhere send the key in Authorization, never the session cookie.
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    assert (
        preflight(base, "/chats/", "http://localhost:3000", "GET", "authorization").headers[
            "Access-Control-Allow-Origin"
        ]
        == "http://localhost:3000"
    )

    chat_id = new_chat(base, QUESTION)
    stream_path = f"/conversations/inference/{chat_id}"
    stream_preflight = preflight(base, stream_path, ALLOWED, "GET", "authorization, last-event-id")
    assert stream_preflight.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "last-event-id" in stream_preflight.headers["Access-Control-Allow-Headers"]
    stream = requests.get(infer(base, chat_id, f"max_tokens=4&{GREEDY}"), headers={"Origin": ALLOWED}, timeout=60)
    assert stream.headers["Content-Type"] == "text/event-stream"
    assert stream.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "event: done" in stream.text
    # Errors carry the headers too, so that the page can read them; Location and X-Total-Count are readable.
    missing = requests.get(f"{base}/chats/not-a-chat", headers={"Origin": ALLOWED}, timeout=10)
    assert missing.status_code == 404 and missing.headers["Access-Control-Allow-Origin"] == ALLOWED
    listed = requests.get(f"{base}/chats/", headers={"Origin": ALLOWED}, timeout=10)
    exposed = set(listed.headers["Access-Control-Expose-Headers"].split(", "))
    assert {"Location", "X-Total-Count", "Retry-After"} <= exposed

    # Any other origin gets no CORS header at all, so its pages cannot read a thing.
    assert cors_headers(preflight(base, "/chats/create", OTHER, "POST", "authorization")) == {}
    assert cors_headers(requests.get(f"{base}/chats/", headers={"Origin": OTHER}, timeout=10)) == {}


def test_off_by_default(start_server, client):
    base = start_server().url
    assert cors_headers(preflight(base, "/chats/create", ALLOWED, "POST", "authorization, content-type")) == {}
    assert cors_headers(requests.get(f"{base}/chats/", headers={"Origin": ALLOWED}, timeout=10)) == {}
    stream_path = f"/conversations/inference/{new_chat(base, QUESTION)}"
    assert cors_headers(preflight(base, stream_path, ALLOWED, "GET", "authorization, last-event-id")) == {}
