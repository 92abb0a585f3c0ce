"""/health, /openapi.json and the offline docs page."""

import re
import time
import uuid
from urllib.parse import urlparse

import pytest

from chatapi import create_app


def wait_for_the_model(app) -> None:
    service = app.extensions["replies"]
    service.load()
    deadline = time.monotonic() + 60
    while service.status == "loading" and time.monotonic() < deadline:
        time.sleep(0.1)


def test_health_reports_database_and_model(app, client):
    wait_for_the_model(app)
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json
    assert (body["status"], body["database"]) == ("ok", "ok")
    assert body["model"]["status"] == "ok" and body["model"]["n_ctx"] == 4096
    assert body["model"]["name"] == "gemma-3-270m" and body["model"]["path"].endswith(".gguf")


def test_openapi_lists_every_documented_route(client):
    spec = client.get("/openapi.json").json
    routes = {(path, method) for path, item in spec["paths"].items() for method in item}
    documented = {
        ("/chats/", "get"),
        ("/chats/{chat_id}", "get"),
        ("/chats/create", "post"),
        ("/chats/delete/{chat_id}", "delete"),
        ("/chats/update/{chat_id}", "put"),
        ("/conversations/create", "post"),
        ("/chats/{chat_id}/conversations", "get"),
        ("/conversations/", "get"),
        ("/conversations/{conversation_id}", "get"),
        ("/conversations/update/{conversation_id}", "put"),
        ("/conversations/delete/{conversation_id}", "delete"),
        ("/health", "get"),
        ("/conversations/inference/{chat_id}", "get"),
        ("/conversations/stop/{chat_id}", "post"),
        ("/conversations/inference_internet/{chat_id}", "get"),
        ("/chats/{chat_id}/conversations", "delete"),
        ("/chats/{chat_id}/export", "get"),
        ("/chats/import", "post"),
        ("/chats/{chat_id}/shares", "post"),
        ("/chats/{chat_id}/shares", "get"),
        ("/chats/{chat_id}/shares/{share_id}", "delete"),
        ("/s/{token}", "get"),
    }
    assert documented <= routes
    chat = spec["components"]["schemas"]["Chat"]["properties"]
    assert set(chat) == {"id", "name", "system_prompt", "model", "created_at", "updated_at"}
    assert chat["system_prompt"]["nullable"] is True and chat["model"]["nullable"] is True
    inference = spec["paths"]["/conversations/inference/{chat_id}"]["get"]
    assert {p["name"] for p in inference["parameters"] if p["in"] == "query"} == {
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "after",
        "replace",
        "model",
        "format",
        "schema",
    }
    assert "text/event-stream" in inference["responses"]["200"]["content"]
    create = spec["paths"]["/chats/create"]["post"]
    assert "201" in create["responses"] and "422" in create["responses"]
    shared = spec["paths"]["/s/{token}"]["get"]
    assert {p["name"] for p in shared["parameters"] if p["in"] == "query"} == {"format"}
    assert {"application/json", "text/html"} <= set(shared["responses"]["200"]["content"])
    assert shared["security"] == [] and "404" in shared["responses"]
    make_share = spec["paths"]["/chats/{chat_id}/shares"]["post"]
    assert {"201", "404", "409", "422"} <= set(make_share["responses"])


def operations(spec: dict):
    """(method and path, operation) for every operation of the document."""
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method != "parameters":  # the path's own, shared by its operations
                yield f"{method.upper()} {path}", operation


def test_openapi_documents_every_error(client):
    spec = client.get("/openapi.json").json
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "status", "message"} and "errors" in error["properties"]
    assert spec["components"]["responses"]["TOO_MANY_REQUESTS"]["headers"]["Retry-After"]["required"] is True
    for where, operation in operations(spec):
        statuses = set(operation["responses"])
        assert "default" not in statuses, f"{where}: a catch-all response hides undocumented statuses"
        assert {"414", "429", "503"} <= statuses, where
        # Accounts can come on at any time (a person is made): every route but the open ones may ask who is asking.
        assert ("401" in statuses) == (operation.get("security") != []) or where == "POST /session", where
        if "requestBody" in operation:
            assert {"400", "413", "422"} <= statuses, where
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and "$ref" not in response:
                assert "application/json" in response["content"], f"{where} {status}"
    for route in ("/conversations/inference/{chat_id}", "/conversations/inference_internet/{chat_id}"):
        stream = spec["paths"][route]["get"]
        assert {"200", "204", "404", "409", "422", "503"} <= set(stream["responses"])
        events = stream["responses"]["200"]["content"]["text/event-stream"]["schema"]["oneOf"]
        assert len(events) == 8  # start, search, sources, warning, queued, message (tokens), done, error
        assert "Retry-After" in stream["responses"]["503"]["headers"]
        assert spec["paths"][route]["parameters"][0]["name"] == "Last-Event-ID"
    done = spec["components"]["schemas"]["DoneEvent"]["properties"]
    assert done["event"]["enum"] == ["done"]
    assert done["data"]["contentSchema"] == {"$ref": "#/components/schemas/StreamDone"}
    schemas = spec["components"]["schemas"]
    # Citations, in the saved message and at the top of `done`: a list of {start, end, n}, or null.
    for where in (schemas["Conversation"], schemas["StreamDone"]):
        assert "citations" in where["required"]
        citations = where["properties"]["citations"]
        assert citations["type"] == "array" and citations["nullable"] is True
        assert citations["items"] == {"$ref": "#/components/schemas/Citation"}
    assert set(schemas["Citation"]["required"]) == {"start", "end", "n"}
    assert {p["type"] for p in schemas["Citation"]["properties"].values()} == {"integer"}
    offset = next(p for p in spec["paths"]["/chats/"]["get"]["parameters"] if p["name"] == "offset")
    assert offset["schema"]["maximum"] == 2**63 - 1


def test_openapi_with_keys_documents_401_on_every_operation_that_asks_for_one(database_url):
    config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url}
    keyed = create_app({**config, "CHATAPI_API_KEYS": ("k" * 16,)})
    spec = keyed.test_client().get("/openapi.json").json
    # Every app shares one Api (extensions.api), whose document is the last app's: the tests after this one
    # must see the open server's again.
    create_app(config)
    unauthorized = spec["components"]["responses"]["UNAUTHORIZED"]
    assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True
    open_operations = set()
    for where, operation in operations(spec):
        if operation.get("security") == []:
            open_operations.add(where)
        else:
            assert operation["responses"]["401"] == {"$ref": "#/components/responses/UNAUTHORIZED"}, where
    assert open_operations == {"GET /health", "POST /session", "DELETE /session", "GET /s/{token}"}


def test_docs_page_loads_only_local_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 3
    for asset in assets:
        assert not urlparse(asset).netloc, f"{asset} is loaded from another host"
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.data) > 200  # a file, not an empty answer (Swagger UI's start script is short)
    assert "/openapi.json" in html


def test_docs_page_has_the_pages_policy_and_no_page_may_frame_html(app, client):
    """/docs and its files get the page's Content-Security-Policy (tests/page/test_browser.py shows Swagger UI works
    under it); any other HTML at least frame-ancestors 'none'; every response nosniff."""
    page_policy = client.get("/").headers["Content-Security-Policy"]
    assert "script-src 'self';" in page_policy and "frame-ancestors 'none'" in page_policy
    for path in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/static/docs.js"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["Content-Security-Policy"] == page_policy, path
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
    assert "<script>" not in client.get("/docs").get_data(as_text=True)  # no inline script to allow
    assert client.get("/chats/").headers["X-Content-Type-Options"] == "nosniff"

    other = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"]})
    other.add_url_rule("/some.html", "some_html", lambda: "<!doctype html><p>HTML of another route</p>")
    response = other.test_client().get("/some.html")
    assert response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


KEY = "health-key-" + uuid.uuid4().hex


@pytest.fixture
def keyed_app(database_url):
    """Makes apps with a key (on the given database, else the tests'); then an open one again, since every app
    shares one API document, the last app's."""
    yield lambda url=database_url: create_app(
        {"TESTING": True, "SQLALCHEMY_DATABASE_URI": url, "CHATAPI_API_KEYS": (KEY,)}
    )
    create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})


def test_health_tells_a_stranger_only_which_part_cannot_serve(app, keyed_app):
    """With API keys on: the status of each part to anyone (monitors), the details to keyed requests."""
    keyed = keyed_app()
    wait_for_the_model(keyed)
    client = keyed.test_client()
    stranger = client.get("/health")
    assert stranger.status_code == 200
    assert stranger.json == {"status": "ok", "database": "ok", "model": {"status": "ok"}}
    for wrong in ({"Authorization": "Bearer not-the-key"}, {"Cookie": "chatapi_session=forged"}):
        assert client.get("/health", headers=wrong).json == stranger.json
    keyed_body = client.get("/health", headers={"Authorization": f"Bearer {KEY}"}).json
    assert keyed_body["model"]["path"].endswith(".gguf") and keyed_body["model"]["name"] == "gemma-3-270m"
    client.post("/session", json={"key": KEY})  # the page's session sees them too
    assert client.get("/health").json == keyed_body


def test_health_of_a_database_that_is_down_names_no_address_to_a_stranger(keyed_app):
    client = keyed_app("postgresql+psycopg://postgres@127.0.0.1:1/none").test_client()
    stranger = client.get("/health")
    assert stranger.status_code == 503 and stranger.headers["Retry-After"].isdigit()
    assert stranger.json["database"] == "error" and "reason" not in stranger.json
    assert "127.0.0.1" not in stranger.get_data(as_text=True)
    keyed = client.get("/health", headers={"Authorization": f"Bearer {KEY}"})
    assert keyed.status_code == 503 and "127.0.0.1" in keyed.json["reason"]
