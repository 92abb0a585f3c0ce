"""/health, /openapi.json and the offline docs page."""

import re
import time
from urllib.parse import urlparse


def test_health_reports_database_and_model(app, client):
    service = app.extensions["replies"]
    service.load()
    deadline = time.monotonic() + 60
    while service.status == "loading" and time.monotonic() < deadline:
        time.sleep(0.1)
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json
    assert (body["status"], body["database"]) == ("ok", "ok")
    assert body["model"]["status"] == "ok" and body["model"]["n_ctx"] == 4096
    assert body["model"]["name"] == "Gemma 3 270m" and body["model"]["path"].endswith(".gguf")


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
    }
    assert documented <= routes
    chat = spec["components"]["schemas"]["Chat"]["properties"]
    assert set(chat) == {"id", "name", "created_at", "updated_at"}
    inference = spec["paths"]["/conversations/inference/{chat_id}"]["get"]
    assert {p["name"] for p in inference["parameters"] if p["in"] == "query"} == {
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "after",
    }
    assert "text/event-stream" in inference["responses"]["200"]["content"]
    create = spec["paths"]["/chats/create"]["post"]
    assert "201" in create["responses"] and "422" in create["responses"]


def test_openapi_documents_every_error_and_how_to_authenticate(client):
    spec = client.get("/openapi.json").json
    schemes = spec["components"]["securitySchemes"]
    assert (schemes["bearerAuth"]["type"], schemes["bearerAuth"]["scheme"]) == ("http", "bearer")
    assert (schemes["cookieAuth"]["type"], schemes["cookieAuth"]["in"]) == ("apiKey", "cookie")
    assert schemes["cookieAuth"]["name"] == "chatapi_session"
    assert spec["security"] == [{"bearerAuth": []}, {"cookieAuth": []}]
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "status", "message"} and "errors" in error["properties"]
    responses = spec["components"]["responses"]
    assert responses["UNAUTHORIZED"]["headers"]["WWW-Authenticate"]["required"] is True
    assert responses["TOO_MANY_REQUESTS"]["headers"]["Retry-After"]["required"] is True
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":  # the path's own, shared by its operations
                continue
            where = f"{method.upper()} {path}"
            statuses = set(operation["responses"])
            assert "default" not in statuses, f"{where}: a catch-all response hides undocumented statuses"
            assert {"414", "429", "503"} <= statuses, where
            public = operation.get("security") == []
            assert ("401" in statuses) != public, where
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= statuses, where
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and "$ref" not in response:
                    assert "application/json" in response["content"], f"{where} {status}"
    assert spec["paths"]["/health"]["get"]["security"] == []
    for route in ("/conversations/inference/{chat_id}", "/conversations/inference_internet/{chat_id}"):
        stream = spec["paths"][route]["get"]
        assert {"200", "204", "404", "409", "422", "503"} <= set(stream["responses"])
        assert list(stream["responses"]["200"]["content"]) == ["text/event-stream"]
        assert "Retry-After" in stream["responses"]["503"]["headers"]
        assert spec["paths"][route]["parameters"][0]["name"] == "Last-Event-ID"
    offset = next(p for p in spec["paths"]["/chats/"]["get"]["parameters"] if p["name"] == "offset")
    assert offset["schema"]["maximum"] == 2**63 - 1


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
        assert len(response.data) > 1000
    assert "/openapi.json" in html
