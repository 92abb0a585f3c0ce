"""The Postman collection (postman/), run by newman against the real server: every assertion must pass."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import requests

from tests.support.fake_hub import FakeHub, bundled_model, hub_environment
from tests.support.server import ROOT

NEWMAN = ROOT / "node_modules" / ".bin" / "newman"
COLLECTION = ROOT / "postman" / "chatapi.postman_collection.json"
SCHEMA_V21 = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
VOLCANO_QUESTION = "How often does the Zorblax volcano erupt?"  # answered by the local web's volcano page
PULL_SOURCE = "acme/tiny-GGUF:Q4_K_M"  # the tests' hub serves the bundled GGUF under this name
PULL_FOLDERS = ("Pull a model", "Removal of the pulled model")  # run only when pullSource is set


def newman(collection: Path, base: str, report: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run a collection against `base`; returns the process and newman's JSON report of the run."""
    if not NEWMAN.exists():
        pytest.fail(f"{NEWMAN} is missing: `make test` installs newman (npm ci)")
    command = [str(NEWMAN), "run", str(collection), "--env-var", f"baseUrl={base}", *options]
    command += ["--reporters", "cli,json", "--reporter-json-export", str(report), "--color", "off"]
    command += ["--timeout-request", "120000"]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return process, json.loads(report.read_text())["run"]


def requests_of(items: list[dict]) -> list[dict]:
    """The collection's requests in run order (folders flattened)."""
    found = []
    for item in items:
        found.extend(requests_of(item["item"]) if "item" in item else [item])
    return found


def folders_named(items: list[dict], names: tuple[str, ...]) -> list[dict]:
    """The folders of these names, at any depth."""
    found = []
    for item in items:
        if "item" in item:
            found.extend([item] if item["name"] in names else folders_named(item["item"], names))
    return found


@pytest.fixture(scope="module")
def hub():
    """A Hugging Face endpoint of the tests' own on 127.0.0.1 (tests/support/fake_hub.py), for the collection's pull."""
    server = FakeHub(*bundled_model())
    yield server
    server.close()


def first_admin_key(base: str) -> str:
    """On a server nobody uses yet: its first person, an admin, made over the API (POST /users is open while nobody
    exists), signs in with their name and password and makes a key of their own, as a new box's owner would."""
    person = {"name": "owner", "password": "postman-owner-password", "admin": True}
    assert requests.post(f"{base}/users", json=person, timeout=10).status_code == 201
    with requests.Session() as browser:
        signed_in = browser.post(f"{base}/session", json={"name": "owner", "password": person["password"]}, timeout=10)
        assert signed_in.status_code == 204
        made = browser.post(f"{base}/me/keys", json={"label": "postman"}, timeout=10)
        assert made.status_code == 201
        return made.json()["key"]


@pytest.mark.parametrize("accounts", ["open", "with-key", "with-person"])
def test_the_collection_passes_against_the_real_server(accounts, start_server, web, hub, client, tmp_path):
    """Open: nobody exists and no keys (the Accounts folder checks the 404 and skips the rest), and no pullSource
    (the folders that pull and remove a model are skipped: one model, the bundled one). With a key: a key of
    CHATAPI_API_KEYS, which acts as the admin `admin`. With a person: no CHATAPI_API_KEYS, the first person made over
    the API, an admin, and the whole run with their own key. Both pull a model from the tests' hub, which the chat
    of the Models folder then uses beside the bundled one, and remove it."""
    keys = {"CHATAPI_API_KEYS": "postman-key-0123456789"} if accounts == "with-key" else {}
    pulls = accounts != "open"
    hub_settings = hub_environment(hub, tmp_path / "hf-home")
    server = start_server(
        CHATAPI_PING_SECONDS="0.5",
        CHATAPI_SEARCH_URL=f"{web.url}/duckduckgo/html/",
        CHATAPI_FETCH_ALLOW="127.0.0.1",
        CHATAPI_FETCH_TIMEOUT="2",
        CHATAPI_RESEARCH_TIMEOUT="6",
        CHATAPI_MODELS_DIR=str(tmp_path / "models"),  # the pulled model's, this run's own
        **{name: hub_settings[name] for name in ("HF_ENDPOINT", "HF_HOME")},
        **keys,
    )
    api_key = {"open": None, "with-key": keys.get("CHATAPI_API_KEYS"), "with-person": None}[accounts]
    if accounts == "with-person":
        api_key = first_admin_key(server.url)
    options = ["--env-var", f"internetQuestion={VOLCANO_QUESTION}"]
    if pulls:
        options += ["--env-var", f"pullSource={PULL_SOURCE}"]
    if api_key:
        options += ["--env-var", f"apiKey={api_key}"]
    process, run = newman(COLLECTION, server.url, tmp_path / "report.json", *options)
    failures = [f"{f['source']['name']}: {f['error'].get('test')}: {f['error']['message']}" for f in run["failures"]]
    assert failures == [], process.stdout[-4000:]
    assert process.returncode == 0, process.stdout[-4000:]

    folders = json.loads(COLLECTION.read_text())["item"]
    expected = [item["name"] for item in requests_of(folders)]
    if not api_key:  # without accounts the Accounts folder runs its first request only
        skipped = [item["name"] for item in requests_of([f for f in folders if f["name"] == "Accounts"])[1:]]
        expected = [name for name in expected if name not in skipped]
    if not pulls:  # without pullSource nothing is pulled, nor removed
        skipped = [item["name"] for item in requests_of(folders_named(folders, PULL_FOLDERS))]
        assert len(skipped) >= 5
        expected = [name for name in expected if name not in skipped]
    assert [e["item"]["name"] for e in run["executions"]] == expected, "a request was skipped"
    assert run["stats"]["requests"] == {"total": len(expected), "pending": 0, "failed": 0}
    assert run["stats"]["assertions"]["failed"] == 0 and run["stats"]["assertions"]["total"] >= 100
    passed = {a["assertion"] for e in run["executions"] for a in e.get("assertions", []) if "error" not in a}
    assert "numbered sources, saved with the answer" in passed  # the local web's pages were read
    assert "citations: sentences of the saved message, each naming a source" in passed
    assert ("204, and the session cookie" if api_key else "404: the server has no API keys") in passed
    if api_key:  # the Accounts folder ran through: a signed-out cookie and a revoked key stop working at once
        assert {"404, as for an unknown chat", "401 Unauthorized", "401, with WWW-Authenticate"} <= passed
    else:
        assert "404: the server has no accounts" in passed
    if pulls:  # the model pulled from the tests' hub answered in a chat beside the bundled one
        assert "done: the pulled model, from the hub, not the default" in passed
        assert "start and done name the chat's model" in passed
        assert "the message names the removed model" in passed  # a chat still naming it, once it was removed
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    assert requests.get(f"{server.url}/chats/", headers=headers, timeout=10).json() == []  # the run cleans up
    models = requests.get(f"{server.url}/models", headers=headers, timeout=10).json()
    assert [model["source"] for model in models] == ["bundled"]  # the pulled model was removed
    assert list((tmp_path / "models").rglob("*.gguf")) == []  # and its file
    if api_key:  # and leaves nobody behind: the admin alone
        people = requests.get(f"{server.url}/users", headers=headers, timeout=10).json()
        assert [person["name"] for person in people] == ["admin" if accounts == "with-key" else "owner"]
    else:  # nor made anyone: the box is still open
        assert requests.get(f"{server.url}/me", timeout=10).status_code == 404


def test_newman_fails_the_run_when_an_assertion_fails(web, tmp_path):
    collection = {
        "info": {"name": "must fail", "schema": SCHEMA_V21},
        "item": [
            {
                "name": "expects a teapot",
                "event": [
                    {"listen": "test", "script": {"exec": ['pm.test("418", () => pm.response.to.have.status(418));']}}
                ],
                "request": {"method": "GET", "url": "{{baseUrl}}/articles/volcano"},
            }
        ],
    }
    path = tmp_path / "failing.postman_collection.json"
    path.write_text(json.dumps(collection))
    process, run = newman(path, web.url, tmp_path / "report.json")
    assert process.returncode != 0
    assert run["stats"]["assertions"] == {"total": 1, "pending": 0, "failed": 1}


def test_the_collection_has_a_request_with_tests_for_every_route(client):
    collection = json.loads(COLLECTION.read_text())
    assert collection["info"]["schema"] == SCHEMA_V21
    variables = {v["key"]: v["value"] for v in collection["variable"]}
    assert variables["baseUrl"] == "http://127.0.0.1:5000"
    items = requests_of(collection["item"])
    names = [item["name"] for item in items]
    assert len(names) == len(set(names))
    for item in items:
        assert item["request"]["url"]["raw"].startswith("{{baseUrl}}/"), item["name"]
        assert item["request"].get("description"), item["name"]
        script = "\n".join(line for e in item["event"] if e["listen"] == "test" for line in e["script"]["exec"])
        assert "pm.test(" in script and "to.have.status(" in script, item["name"]
        if "body" in item["request"] and item["request"]["body"]["raw"].startswith("{"):
            json.loads(item["request"]["body"]["raw"].replace("{{", "").replace("}}", ""))  # example bodies are JSON
    assert sum(name.startswith("Bad input") for name in names) >= 20

    def covers(method: str, template: str) -> bool:
        pattern = re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$")
        paths = [
            "/" + "/".join(item["request"]["url"]["path"])
            for item in items
            if item["request"]["method"] == method.upper() and not item["name"].startswith("Bad input: a method")
        ]
        return any(pattern.match(path) for path in paths)

    spec = client.get("/openapi.json").json
    verbs = {"get", "post", "put", "patch", "delete"}
    routes = [(method, path) for path, operations in spec["paths"].items() for method in operations if method in verbs]
    assert len(routes) >= 15
    assert ("get", "/conversations/inference_internet/{chat_id}") in routes
    missing = [f"{method.upper()} {path}" for method, path in routes if not covers(method, path)]
    assert missing == []
    # The stream routes are plain GETs Postman opens (it shows the events as they arrive).
    streams = [item for item in items if "/inference" in item["request"]["url"]["raw"]]
    assert {"inference", "inference_internet"} <= {item["request"]["url"]["path"][1] for item in streams}
