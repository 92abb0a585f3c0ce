"""/models (chatapi/model_api.py): the models listed, a pull over the API and its progress as Server-Sent Events,
removal, and who may do what. The pulls themselves are tests/test_pulls.py's; here they come from the tests' own
hub on 127.0.0.1 (tests/support/fake_hub.py). A pull through the real server (gunicorn's gevent worker starts the
pull's process and streams its progress) on SQLite, where the database plays no part; who may pull and remove,
in process on both databases, whose people decide it."""

import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from chatapi import create_app, people, replies
from chatapi.extensions import db
from chatapi.llm.catalog import BUNDLED_ID, Catalog, ModelEntry
from tests.support.fake_hub import FakeHub, bundled_model, hub_environment
from tests.support.server import ROOT, Server, migrate
from tests.support.sse import EventStream

FLASK = Path(sys.executable).parent / "flask"
PULLED = "acme/tiny-GGUF:Q4_K_M"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def hub():
    server = FakeHub(*bundled_model())
    yield server
    server.close()


def model_url(base: str, model_id: str, suffix: str = "") -> str:
    return f"{base}/models/{quote(model_id, safe='/:')}{suffix}"


# Through the real server


@pytest.fixture(scope="module")
def pull_server(hub, tmp_path_factory):
    """The real server on a migrated SQLite database of its own, its models in a folder of the module's own,
    pulling from the tests' hub."""
    folder = tmp_path_factory.mktemp("pull-server")
    database_url = f"sqlite:///{folder}/chatapi.db"
    migrate(database_url)
    env = hub_environment(hub, folder / "hf-home")
    settings = {name: env[name] for name in ("HF_ENDPOINT", "HF_HOME")}
    server = Server(database_url, folder / "gunicorn.log", CHATAPI_MODELS_DIR=str(folder / "models"), **settings)
    server.models_dir = folder / "models"
    yield server.wait_until_up()
    server.stop()


def events_of(url: str) -> tuple[list[dict], float]:
    """Every event of a progress stream, and how long it took."""
    start = time.monotonic()
    stream = EventStream(url, timeout=120)
    assert stream.response.status_code == 200, stream.response.text
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    try:
        return list(stream), time.monotonic() - start
    finally:
        stream.close()


def test_a_pull_streams_its_progress_then_its_model(pull_server, hub):
    base = pull_server.url
    hub.cut["tiny-Q4_K_M.gguf"] = 0.5  # resumed after a second: a pull that lasts long enough to be seen running
    started = requests.post(f"{base}/models", json={"source": PULLED}, timeout=30)
    assert started.status_code == 202, started.text
    progress_url = f"/models/{PULLED}/progress"
    assert started.json() == {"id": PULLED, "status": "pulling", "progress_url": progress_url}
    assert started.headers["Location"] == progress_url

    again = requests.post(f"{base}/models", json={"source": PULLED}, timeout=30)
    assert again.status_code == 409 and "being pulled" in again.json()["message"]

    events, seconds = events_of(base + progress_url)
    *progress, done = events
    assert done["event"] == "done", events
    assert progress and {e["event"] for e in progress} == {"progress"}
    assert len(progress) <= 4 * seconds + 2  # at most about 4 a second
    downloaded = [e["data"]["downloaded"] for e in progress]
    assert downloaded == sorted(downloaded)
    size = bundled_model()[0].stat().st_size
    assert progress[-1]["data"]["total"] in (None, size) and any(0 < n < size for n in downloaded), progress
    model = done["data"]["model"]
    assert model["id"] == PULLED and model["source"] == "hub" and model["repo"] == "acme/tiny-GGUF"
    assert (model["size"], model["quantization"], model["context_length"]) == (size, "Q4_K_M", 32768)
    assert model["chat_template"] is False and model["default"] is False and TIMESTAMP.match(model["created_at"])

    assert requests.get(model_url(base, PULLED), timeout=10).json() == model
    assert PULLED in [m["id"] for m in requests.get(f"{base}/models", timeout=10).json()]
    assert [e["event"] for e in events_of(base + progress_url)[0]] == ["done"]  # at once, now
    there = requests.post(f"{base}/models", json={"source": PULLED}, timeout=30)
    assert there.status_code == 409 and "there already" in there.json()["message"]

    path = pull_server.models_dir / "hub" / "acme" / "tiny-GGUF" / "tiny-Q4_K_M.gguf"
    assert path.exists()
    assert requests.delete(model_url(base, PULLED), timeout=10).status_code == 204
    assert not path.exists()
    assert requests.get(model_url(base, PULLED), timeout=10).status_code == 404
    assert requests.delete(model_url(base, PULLED), timeout=10).status_code == 404
    gone = requests.get(model_url(base, PULLED, "/progress"), timeout=10)
    assert gone.status_code == 404 and gone.headers["Content-Type"] == "application/json"


def status_of(url: str) -> int:
    with requests.get(url, timeout=10, stream=True) as response:  # a stream is not read: hung up at once
        return response.status_code


def test_a_pull_by_the_command_line_shows_over_the_api(pull_server, hub):
    """Every process sees every pull: `flask models pull` on the box, its progress from the server."""
    base, model_id = pull_server.url, "acme/tiny-GGUF:tiny-Q8_0"
    hub.cut["tiny-Q8_0.gguf"] = 0.5
    env = dict(
        hub_environment(hub, pull_server.models_dir.parent / "hf-home"),
        FLASK_APP="wsgi",
        DATABASE_URL=pull_server.database_url,
        CHATAPI_MODELS_DIR=str(pull_server.models_dir),
    )
    command = [str(FLASK), "models", "pull", "acme/tiny-GGUF", "tiny-Q8_0.gguf"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while status_of(model_url(base, model_id, "/progress")) == 404:
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.05)
        events, _ = events_of(model_url(base, model_id, "/progress"))
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        hub.cut.clear()
    assert process.returncode == 0, err
    assert out.startswith(f"pulled {model_id} (253 MB")
    assert [e["event"] for e in events][-1] == "done" and events[-1]["data"]["model"]["id"] == model_id
    assert "progress" in {e["event"] for e in events}
    assert requests.delete(model_url(base, model_id), timeout=10).status_code == 204  # and the API removes it


@pytest.mark.parametrize(
    "body, says",
    [
        ({"source": "acme/nope-GGUF:Q4_K_M"}, "acme/nope-GGUF is not on 127.0.0.1:"),
        ({"source": "acme/many-GGUF:Q4_K_M"}, "ambiguous in acme/many-GGUF: many-Q4_K_M.gguf, many-instruct"),
        ({"source": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}, "tiny-Q8_0.gguf is corrupt"),
    ],
)
def test_a_pull_that_fails_ends_its_stream_with_the_reason(pull_server, hub, body, says):
    base = pull_server.url
    hub.corrupt.add("tiny-Q8_0.gguf")
    try:
        started = requests.post(f"{base}/models", json=body, timeout=30)
        assert started.status_code == 202, started.text
        events, _ = events_of(base + started.json()["progress_url"])
    finally:
        hub.corrupt.clear()
    assert events[-1]["event"] == "error" and says in events[-1]["data"]["message"], events
    assert {e["event"] for e in events[:-1]} <= {"progress"}
    model_id = started.json()["id"]
    assert requests.get(model_url(base, model_id), timeout=10).status_code == 404
    assert [e["event"] for e in events_of(base + started.json()["progress_url"])[0]] == ["error"]  # it stays said
    assert list((pull_server.models_dir / "hub").rglob("*.gguf")) == []
    retried = requests.post(f"{base}/models", json=body, timeout=30)  # a failed pull may be tried again
    assert retried.status_code == 202, retried.text
    events_of(base + retried.json()["progress_url"])


# In process, on both databases


@pytest.fixture
def models_app(app, database_url, tmp_path, hub, monkeypatch):
    """An app on the test's database whose models are the test's own (CHATAPI_MODELS_DIR), pulling from the
    tests' hub (a pull's process inherits this process's environment)."""
    env = hub_environment(hub, tmp_path / "hf-home")
    for name in ("HF_ENDPOINT", "HF_HOME"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    other = create_app(
        {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "CHATAPI_MODELS_DIR": str(tmp_path / "models")}
    )
    yield other
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


def catalog_of(app) -> Catalog:
    with app.app_context():
        return replies.service().catalog


def registered(app, model_id: str) -> Path:
    """A pulled model's entry, made without a download (the catalog does not read its file): its file."""
    catalog = catalog_of(app)
    repo = model_id.split(":")[0]
    path = catalog.hub_dir(repo) / "model.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    files = ("model.gguf",)
    catalog.add(ModelEntry(model_id, str(path), 4, "Q4_K_M", "gemma3", 32768, True, "hub", repo, files, {}, 1.0))
    return path


def test_the_models_are_listed_the_default_first(models_app, client):
    web = models_app.test_client()
    registered(models_app, "acme/other-GGUF:Q4_K_M")
    listed = web.get("/models")
    assert listed.status_code == 200
    bundled, other = listed.json
    assert bundled["id"] == BUNDLED_ID and bundled["default"] is True and bundled["source"] == "bundled"
    assert other["id"] == "acme/other-GGUF:Q4_K_M" and other["default"] is False and other["loaded"] is False
    assert other["repo"] == "acme/other-GGUF" and other["created_at"] == "1970-01-01T00:00:01.000Z"
    assert (
        set(bundled)
        == set(other)
        == {
            *("id", "size", "quantization", "architecture", "context_length", "chat_template", "loaded", "default"),
            *("source", "repo", "created_at"),
        }
    )
    assert web.get(f"/models/{BUNDLED_ID}").json == bundled
    assert web.get("/models/acme/other-GGUF:Q4_K_M").json == other
    for path in ("/models/acme/none-GGUF:Q4_K_M", "/models/acme/none-GGUF:Q4_K_M/progress"):
        missing = web.get(path)
        assert missing.status_code == 404 and missing.json["code"] == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "source"),
        ({"source": "tiny-GGUF"}, "source"),
        ({"source": "acme/tiny-GGUF:Q4 K"}, "source"),
        ({"source": "acme/tiny-GGUF:Q4_K_M", "file": "tiny-Q8_0.gguf"}, "source"),
        ({"source": "acme/tiny-GGUF", "file": "README.md"}, "file"),
        ({"source": "acme/tiny-GGUF", "file": ""}, "file"),
    ],
)
def test_a_source_that_names_no_model_is_a_422_naming_the_field(models_app, client, body, field):
    refused = models_app.test_client().post("/models", json=body)
    assert refused.status_code == 422 and list(refused.json["errors"]) == [field], refused.json
    assert not (Path(catalog_of(models_app).dir) / "pulls").exists()  # nothing started


def test_the_default_and_the_bundled_model_stay(models_app, client, tmp_path, database_url):
    web = models_app.test_client()
    bundled = web.delete(f"/models/{BUNDLED_ID}")
    assert bundled.status_code == 409 and "default" in bundled.json["message"]
    assert web.delete("/models/acme/none-GGUF:Q4_K_M").status_code == 404

    path = registered(models_app, PULLED)
    assert web.delete(f"/models/{PULLED}").status_code == 204 and not path.exists()  # not the default: it goes


def test_a_pulled_model_that_is_the_default_stays(models_app, client, tmp_path, database_url):
    path = registered(models_app, PULLED)
    defaulted = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_url,
            "CHATAPI_MODELS_DIR": str(tmp_path / "models"),
            "CHATAPI_MODEL": PULLED,
        }
    )
    default = defaulted.test_client().delete(f"/models/{PULLED}")
    with defaulted.app_context():
        db.engine.dispose()
    assert default.status_code == 409 and "default" in default.json["message"] and path.exists()


def make_person(app, name: str, admin: bool) -> str:
    with app.app_context():
        user = people.create_user(name, "correct horse battery staple", admin=admin)
        _, secret = people.new_key(user, "tests")
        db.session.commit()
        db.session.remove()
    return secret


def test_only_admins_pull_and_remove_once_people_exist(models_app, client):
    path = registered(models_app, PULLED)
    admin = {"Authorization": f"Bearer {make_person(models_app, 'ada', admin=True)}"}
    someone = {"Authorization": f"Bearer {make_person(models_app, 'bo', admin=False)}"}
    web = models_app.test_client()

    assert web.get("/models").status_code == 401  # as every route, once someone exists
    assert [m["id"] for m in web.get("/models", headers=someone).json] == [BUNDLED_ID, PULLED]
    pull = web.post("/models", json={"source": "acme/nope-GGUF:Q4_K_M"}, headers=someone)
    assert pull.status_code == 403 and "admin" in pull.json["message"]
    remove = web.delete(f"/models/{PULLED}", headers=someone)
    assert remove.status_code == 403 and path.exists()

    started = web.post("/models", json={"source": "acme/nope-GGUF:Q4_K_M"}, headers=admin)
    assert started.status_code == 202, started.json
    stream = web.get(started.json["progress_url"], headers=someone)  # anyone may follow it
    assert stream.status_code == 200 and "event: error" in stream.get_data(as_text=True)
    assert web.delete(f"/models/{PULLED}", headers=admin).status_code == 204 and not path.exists()


def test_on_the_remote_backend_the_models_are_the_upstreams(client, database_url):
    remote = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_url,
            "CHATAPI_LLM_BACKEND": "openai",
            "CHATAPI_LLM_URL": "http://127.0.0.1:9/v1",
        }
    )
    web = remote.test_client()
    pull = web.post("/models", json={"source": PULLED})
    assert pull.status_code == 409 and "upstream" in pull.json["message"]
    assert web.delete(f"/models/{PULLED}").status_code == 409
    assert web.get(f"/models/{PULLED}/progress").status_code == 404
    with remote.app_context():
        db.engine.dispose()
