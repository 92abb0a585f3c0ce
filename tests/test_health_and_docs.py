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
