"""Pulls from Hugging Face (chatapi/pulls.py) against the tests' own hub on 127.0.0.1 (tests/support/fake_hub.py),
which serves the bundled GGUF from disk under two quantization names: by quantization, by file, an ambiguous one, a
repo that is not there, a download cut halfway and resumed, a corrupt file, a file that is no GGUF, a gated repo.
Through `pulls.run` in process, and through `flask models ...`: click's runner, and the real command (on a pipe and
on a terminal) where its exit code and what it prints are the point. The database plays no part: SQLite only."""

import fcntl
import hashlib
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from chatapi import create_app, huggingface, pulls
from chatapi.huggingface import PullError, Source
from chatapi.llm.catalog import BUNDLED_ID, Catalog
from chatapi.pulls import PullState
from tests.support.fake_hub import MANY_GGUFS, TOKEN, FakeHub, bundled_model, hub_environment
from tests.support.server import ROOT

FLASK = Path(sys.executable).parent / "flask"
MANY = ["README.md", *MANY_GGUFS]


@pytest.fixture(scope="module")
def model() -> tuple[Path, str]:
    return bundled_model()


@pytest.fixture(scope="module")
def hub(model):
    server = FakeHub(*model)
    yield server
    server.close()


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch) -> dict:
    """HF_ENDPOINT on the tests' hub, an HF_HOME of the test's own, no HF_TOKEN: for this process and its children."""
    env = hub_environment(hub, tmp_path / "hf-home")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.setenv(name, env[name])
    hub.requests.clear()
    return env


@pytest.fixture
def catalog(tmp_path, hub_env) -> Catalog:
    return Catalog(tmp_path / "models")


def pulled(text: str, catalog: Catalog, file: str | None = None):
    """Pull as the CLI and the API's process do (a claimed id, its state file written)."""
    source = huggingface.parse_source(text, file)
    state = PullState(catalog.dir, source.id)
    assert state.claim()
    return pulls.run(source, catalog, state)


def refused_pull(text: str, catalog: Catalog, file: str | None = None) -> str:
    with pytest.raises(PullError) as refused:
        pulled(text, catalog, file)
    message = str(refused.value)
    assert "\n" not in message
    return message


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> list[str]:
    """The files left under the models' folder, but the registry's own and the pulls' states."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.parent.name != "pulls" and not p.name.startswith("catalog.")
    )


def test_a_pull_by_quantization_registers_the_checked_model(catalog, hub, model, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub reads HF_ENDPOINT once, when it is imported: the pull must read it itself, at each pull. As
    # if it had been imported with another one:
    stale = "http://127.0.0.1:9"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", stale)
    monkeypatch.setattr(
        huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", stale + "/{repo_id}/resolve/{revision}/{filename}"
    )

    entry = pulled("acme/tiny-GGUF:q4_k_m", catalog)  # the quantization as typed: any case

    path, sha256 = model
    assert entry.id == "acme/tiny-GGUF:q4_k_m" and entry.source == "hub" and entry.repo == "acme/tiny-GGUF"
    assert entry.files == ("tiny-Q4_K_M.gguf",) and entry.sha256 == {"tiny-Q4_K_M.gguf": sha256}
    assert Path(entry.path) == catalog.hub_dir("acme/tiny-GGUF") / "tiny-Q4_K_M.gguf"
    assert sha256_of(Path(entry.path)) == sha256 and entry.size == path.stat().st_size
    # The GGUF's header, read before it was registered.
    assert (entry.architecture, entry.context_length, entry.quantization) == ("gemma3", 32768, "Q4_K_M")
    assert entry.chat_template is False  # the bundled model is a base model
    assert catalog.get(entry.id) == entry
    state = PullState(catalog.dir, entry.id).read()
    assert state["status"] == "done" and state["downloaded"] == state["total"] == entry.size
    gets = [(method, path) for method, path, _ in hub.requests if method != "HEAD"]
    assert gets == [
        ("GET", "/api/models/acme/tiny-GGUF"),
        ("GET", "/acme/tiny-GGUF/resolve/0123456789abcdef0123456789abcdef01234567/tiny-Q4_K_M.gguf"),
    ]


def test_a_pull_by_file_is_named_after_the_file(catalog, model):
    entry = pulled("acme/tiny-GGUF", catalog, file="tiny-Q8_0.gguf")
    assert entry.id == "acme/tiny-GGUF:tiny-Q8_0" and entry.files == ("tiny-Q8_0.gguf",)
    assert entry.sha256 == {"tiny-Q8_0.gguf": model[1]}
    assert [e.id for e in catalog.entries()] == [BUNDLED_ID, "acme/tiny-GGUF:tiny-Q8_0"]


@pytest.mark.parametrize(
    "source, file, files",
    [
        ("acme/many-GGUF:Q4_K_S", None, ["many-Q4_K_S.gguf"]),
        ("acme/many-GGUF:iq4_xs", None, ["IQ4_XS/many-IQ4_XS.gguf"]),  # in a folder of its own
        ("acme/many-GGUF:Q8_0", None, [f"many-Q8_0-0000{n}-of-00003.gguf" for n in (1, 2, 3)]),  # every part
        ("acme/many-GGUF", "many-Q8_0-00002-of-00003.gguf", [f"many-Q8_0-0000{n}-of-00003.gguf" for n in (1, 2, 3)]),
        ("acme/many-GGUF", "many-instruct-Q4_K_M.gguf", ["many-instruct-Q4_K_M.gguf"]),
        ("acme/many-GGUF", "mmproj-many-F16.gguf", ["mmproj-many-F16.gguf"]),  # named, it is tried (and refused)
        ("acme/one-GGUF", None, ["one-Q5_K_M.gguf"]),  # the only GGUF when none is named
        ("acme/two-GGUF", None, ["two-Q4_K_M.gguf"]),  # else the Q4_K_M, as llama.cpp and Ollama pick
    ],
)
def test_the_quantization_picks_the_files_whose_names_carry_it(source, file, files):
    names = {
        "acme/many-GGUF": MANY,
        "acme/one-GGUF": ["one-Q5_K_M.gguf", "mmproj-one-F16.gguf", "README.md"],
        "acme/two-GGUF": ["two-Q4_K_M.gguf", "two-Q8_0.gguf"],
    }
    wanted = huggingface.parse_source(source, file)
    assert huggingface.pick(wanted, names[wanted.repo]) == files


@pytest.mark.parametrize(
    "source, says",
    [
        ("acme/many-GGUF:Q4_K", "no GGUF file for Q4_K: it has"),  # not a token of Q4_K_M, nor of Q4_K_S
        ("acme/many-GGUF:F16", "no GGUF file for F16"),  # an mmproj is no model of its own
        ("acme/many-GGUF:Q4_K_M", "Q4_K_M is ambiguous in acme/many-GGUF: many-Q4_K_M.gguf, many-instruct-Q4_K_M"),
        ("acme/many-GGUF", "has 5 GGUF models: name one by its quantization"),
    ],
)
def test_no_file_or_several_is_an_error_listing_the_candidates(source, says):
    with pytest.raises(PullError) as refused:
        huggingface.pick(huggingface.parse_source(source), MANY)
    assert says in str(refused.value)
    assert "mmproj" not in str(refused.value)
    if "Q4_K_M is ambiguous" not in says:
        assert "many-Q8_0-00001-of-00003.gguf (3 parts)" in str(refused.value)


def test_a_split_model_missing_a_part_is_refused():
    names = ["m-Q8_0-00001-of-00003.gguf", "m-Q8_0-00003-of-00003.gguf"]
    with pytest.raises(PullError, match="has 2 of the 3 parts of m-Q8_0.gguf"):
        huggingface.pick(Source("acme/m-GGUF", "Q8_0"), names)


@pytest.mark.parametrize(
    "source, file, field",
    [
        ("tiny-GGUF", None, "source"),  # no owner
        ("acme/tiny GGUF:Q4_K_M", None, "source"),
        ("acme/tiny-GGUF:Q4 K", None, "source"),
        ("acme/tiny-GGUF:Q4_K_M", "tiny-Q8_0.gguf", "source"),  # both
        ("acme/tiny-GGUF", "README.md", "file"),
        ("acme/tiny-GGUF", "../../etc/x.gguf", "file"),
    ],
)
def test_a_source_that_names_no_model_is_refused_before_the_hub_is_asked(source, file, field):
    with pytest.raises(huggingface.BadSource) as refused:
        huggingface.parse_source(source, file)
    assert refused.value.field == field


def test_ollama_style_sources_name_the_same_model():
    for text in ("hf.co/acme/tiny-GGUF:Q4_K_M", "https://huggingface.co/acme/tiny-GGUF:Q4_K_M"):
        assert huggingface.parse_source(text).id == "acme/tiny-GGUF:Q4_K_M"


def test_an_ambiguous_quantization_downloads_nothing(catalog, hub):
    message = refused_pull("acme/many-GGUF:Q4_K_M", catalog)
    assert "ambiguous" in message and "many-Q4_K_M.gguf" in message and "many-instruct-Q4_K_M.gguf" in message
    assert [path for _, path, _ in hub.requests] == ["/api/models/acme/many-GGUF"]
    assert PullState(catalog.dir, "acme/many-GGUF:Q4_K_M").read()["message"] == message


def test_a_download_cut_halfway_is_resumed_where_it_stopped(catalog, hub, model):
    path, sha256 = model
    size = path.stat().st_size
    hub.cut["tiny-Q4_K_M.gguf"] = 0.5  # the first GET sends half the file, then hangs up

    entry = pulled("acme/tiny-GGUF:Q4_K_M", catalog)

    first, resumed = hub.gets("tiny-Q4_K_M.gguf")
    assert first is None
    start = int(resumed.removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= size // 2, resumed  # from what it had, not from the start
    assert entry.sha256["tiny-Q4_K_M.gguf"] == sha256 == sha256_of(Path(entry.path))
    assert files_under(catalog.dir) == sorted(
        [
            "hub/acme/tiny-GGUF/tiny-Q4_K_M.gguf",
            "hub/acme/tiny-GGUF/.cache/huggingface/.gitignore",
            "hub/acme/tiny-GGUF/.cache/huggingface/CACHEDIR.TAG",
            "hub/acme/tiny-GGUF/.cache/huggingface/download/tiny-Q4_K_M.gguf.lock",
            "hub/acme/tiny-GGUF/.cache/huggingface/download/tiny-Q4_K_M.gguf.metadata",
        ]
    )  # no partial download left beside it


def test_a_corrupt_download_registers_nothing_and_leaves_no_file(catalog, hub):
    hub.corrupt.add("tiny-Q8_0.gguf")  # one byte changed: the right size, not the hub's SHA-256
    try:
        message = refused_pull("acme/tiny-GGUF:Q8_0", catalog)
    finally:
        hub.corrupt.clear()
    assert "tiny-Q8_0.gguf is corrupt" in message and "nothing was registered" in message
    assert catalog.get("acme/tiny-GGUF:Q8_0") is None
    assert files_under(catalog.dir) == []
    assert not (catalog.dir / "hub").exists()


def test_a_corrupt_download_leaves_the_other_models_of_the_repo(catalog, hub):
    kept = pulled("acme/tiny-GGUF:Q4_K_M", catalog)
    hub.corrupt.add("tiny-Q8_0.gguf")
    try:
        refused_pull("acme/tiny-GGUF:Q8_0", catalog)
    finally:
        hub.corrupt.clear()
    assert [e.id for e in catalog.entries()] == [BUNDLED_ID, kept.id]
    assert Path(kept.path).exists() and not (Path(kept.path).parent / "tiny-Q8_0.gguf").exists()


def test_a_file_that_is_not_a_gguf_is_refused(catalog):
    message = refused_pull("acme/broken-GGUF:Q2_K", catalog)
    assert "broken-Q2_K.gguf is not a model llama.cpp can load" in message and "GGUF" in message
    assert catalog.get("acme/broken-GGUF:Q2_K") is None and files_under(catalog.dir) == []


@pytest.mark.parametrize(
    "source, says",
    [
        ("acme/nope-GGUF:Q4_K_M", "acme/nope-GGUF is not on 127.0.0.1:"),
        ("acme/gated-GGUF:Q4_K_M", "acme/gated-GGUF is gated: accept its terms on 127.0.0.1:"),
        ("acme/tiny-GGUF:Q5_K_M", "acme/tiny-GGUF has no GGUF file for Q5_K_M: it has tiny-Q4_K_M.gguf, tiny-Q8_0"),
        ("acme/tiny-GGUF missing.gguf", "acme/tiny-GGUF has no file missing.gguf"),
    ],
)
def test_what_is_not_there_is_a_one_line_error(catalog, source, says):
    repo, _, file = source.partition(" ")
    assert says in refused_pull(repo, catalog, file or None)
    assert files_under(catalog.dir) == []


def test_a_hub_that_cannot_be_reached_is_a_one_line_error(catalog, monkeypatch):
    closed = FakeHub(Path(__file__))  # a port of 127.0.0.1 that nothing listens on once it is closed
    closed.close()
    monkeypatch.setenv("HF_ENDPOINT", closed.url)
    assert f"{closed.url.removeprefix('http://')} cannot be reached" in refused_pull("acme/tiny-GGUF:Q4_K_M", catalog)


def test_hf_token_opens_a_gated_repo(catalog, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # read as the pull starts
    entry = pulled("acme/gated-GGUF:Q4_K_M", catalog)
    assert entry.files == ("gated-Q4_K_M.gguf",) and Path(entry.path).exists()


def test_one_pull_of_an_id_at_a_time_and_a_dead_one_reads_as_interrupted(tmp_path):
    first, second = PullState(tmp_path, "acme/x-GGUF:Q4_K_M"), PullState(tmp_path, "acme/x-GGUF:Q4_K_M")
    assert first.claim()
    first.write("pulling", 10, 100, "x-Q4_K_M.gguf")
    assert not second.claim()  # another process would be refused the same way: the lock is an flock
    assert second.read()["status"] == "pulling" and second.running()

    first.release()  # as the pulling process's end releases it, however it ends
    state = second.read()
    assert state["status"] == "failed" and "interrupted" in state["message"]
    assert second.claim()


def test_a_few_pulls_at_once(catalog):
    running = [PullState(catalog.dir, f"acme/x{n}-GGUF:Q4_K_M") for n in range(pulls.MAX_PULLS)]
    assert all(state.claim() for state in running)
    source = huggingface.parse_source("acme/tiny-GGUF:Q4_K_M")
    with pytest.raises(pulls.Conflict, match=f"{pulls.MAX_PULLS} pulls are running"):
        pulls.claim(catalog, source)
    assert PullState(catalog.dir, source.id).read() is None  # nothing started

    running.pop().release()
    state = pulls.claim(catalog, source)
    assert state.read()["status"] == "pulling"
    with pytest.raises(pulls.Conflict, match="acme/tiny-GGUF:Q4_K_M is being pulled"):
        pulls.claim(catalog, source)
    for held in (state, *running):
        held.release()


def test_a_killed_pull_process_reads_as_interrupted(catalog, hub):
    """The API's pulls run in a process of their own (`python -m chatapi.pulls`), which takes the claim over."""
    hub.cut["tiny-Q4_K_M.gguf"] = 0.5  # so that it is still pulling when it is killed (the retry waits 1 s)
    source = huggingface.parse_source("acme/tiny-GGUF:Q4_K_M")
    state = PullState(catalog.dir, source.id)
    assert state.claim()
    process = pulls.start(source, catalog.dir, state)
    assert state.lock_fd is None and not PullState(catalog.dir, source.id).claim()  # the child holds it
    deadline = time.monotonic() + 60
    while len(hub.gets("tiny-Q4_K_M.gguf")) < 1:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=10)

    found = PullState(catalog.dir, source.id).read()
    assert found["status"] == "failed" and "interrupted" in found["message"]
    assert catalog.get(source.id) is None
    hub.cut.clear()

    # What it was writing stays, as a kill leaves it, until a pull of that file finds it untouched for a minute.
    [partial] = (catalog.hub_dir("acme/tiny-GGUF") / ".cache").rglob("*.incomplete")
    long_ago = time.time() - 2 * huggingface.STALE_SECONDS
    os.utime(partial, (long_ago, long_ago))
    assert pulled(source.id, catalog).id == source.id
    assert not partial.exists() and files_under(catalog.dir / "hub" / "acme" / "tiny-GGUF" / ".cache") == [
        "huggingface/.gitignore",
        "huggingface/CACHEDIR.TAG",
        "huggingface/download/tiny-Q4_K_M.gguf.lock",
        "huggingface/download/tiny-Q4_K_M.gguf.metadata",
    ]


# The command line


@pytest.fixture
def models_app(tmp_path, hub_env):
    """An app whose models are the test's own (CHATAPI_MODELS_DIR); no table is read by `flask models`."""
    return create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/chatapi.db",
            "CHATAPI_MODELS_DIR": str(tmp_path / "models"),
        }
    )


@pytest.fixture
def runner(models_app):
    return models_app.test_cli_runner()


def succeeded(result) -> str:
    assert result.exit_code == 0 and result.exception is None, (result.output, result.exception)
    return result.stdout


def refused(result) -> str:
    """The one line a refusal writes to standard error, and no traceback."""
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_pull_list_and_remove(runner, tmp_path):
    said = succeeded(runner.invoke(args=["models", "pull", "acme/tiny-GGUF:Q4_K_M"]))
    assert said == "pulled acme/tiny-GGUF:Q4_K_M (253 MB, Q4_K_M, context 32768, no chat template)\n"
    model = tmp_path / "models" / "hub" / "acme" / "tiny-GGUF" / "tiny-Q4_K_M.gguf"
    assert model.exists()

    header, *rows = succeeded(runner.invoke(args=["models", "list"])).splitlines()
    assert header.split() == ["id", "size", "quant", "context", "template", "source", "default"]
    bundled, pulled_row = (row.split() for row in rows)
    assert bundled[0] == BUNDLED_ID and bundled[-2:] == ["bundled", "yes"]  # the default
    assert pulled_row == ["acme/tiny-GGUF:Q4_K_M", "253", "MB", "Q4_K_M", "32768", "no", "hub"]

    again = refused(runner.invoke(args=["models", "pull", "acme/tiny-GGUF:Q4_K_M"]))
    assert "acme/tiny-GGUF:Q4_K_M is there already" in again
    # The same file by another spelling of its quantization: one file, one id.
    other_case = refused(runner.invoke(args=["models", "pull", "acme/tiny-GGUF:q4_k_m"]))
    assert "tiny-Q4_K_M.gguf is there already as the model acme/tiny-GGUF:Q4_K_M" in other_case

    assert succeeded(runner.invoke(args=["models", "remove", "acme/tiny-GGUF:Q4_K_M"])).startswith("removed")
    assert not model.exists() and not (tmp_path / "models" / "hub").exists()
    assert "acme/tiny-GGUF" not in succeeded(runner.invoke(args=["models", "list"]))
    assert "no model has the id" in refused(runner.invoke(args=["models", "remove", "acme/tiny-GGUF:Q4_K_M"]))


@pytest.mark.parametrize(
    "args, says",
    [
        (["pull", "acme/many-GGUF:Q4_K_M"], "ambiguous in acme/many-GGUF: many-Q4_K_M.gguf, many-instruct-Q4_K_M.gguf"),
        (["pull", "acme/broken-GGUF:Q2_K"], "not a model llama.cpp can load"),
        (["pull", "nobody"], "not a Hugging Face repo"),
        (["pull", "acme/tiny-GGUF", "README.md"], "not a .gguf file"),
        (["remove", BUNDLED_ID], "the server's default model"),
        (["remove", "acme/nope"], "no model has the id"),
    ],
)
def test_a_refusal_is_one_line_on_stderr(runner, tmp_path, args, says):
    assert says in refused(runner.invoke(args=["models", *args]))
    assert files_under(tmp_path / "models") == []


def flask_environment(hub_env: dict, tmp_path: Path) -> dict:
    return dict(
        hub_env,
        FLASK_APP="wsgi",
        DATABASE_URL=f"sqlite:///{tmp_path}/chatapi.db",
        CHATAPI_MODELS_DIR=str(tmp_path / "models"),
    )


def test_the_real_command_fails_in_one_line_with_a_non_zero_exit(hub_env, tmp_path):
    done = subprocess.run(
        [str(FLASK), "models", "pull", "acme/nope-GGUF:Q4_K_M"],
        cwd=ROOT,
        env=flask_environment(hub_env, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.startswith("Error: acme/nope-GGUF is not on 127.0.0.1:") and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_the_real_command_shows_a_progress_bar_on_a_terminal(hub_env, tmp_path):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size: tqdm fits it
    process = subprocess.Popen(
        [str(FLASK), "models", "pull", "acme/tiny-GGUF", "tiny-Q8_0.gguf"],
        cwd=ROOT,
        env=flask_environment(hub_env, tmp_path),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    shown = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 0.1)[0]:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the command ended and let go of the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(timeout=30) == 0, shown
    finally:
        process.kill()
        os.close(controller)
    text = shown.decode(errors="replace")
    assert "tiny-Q8_0.gguf" in text and "100%" in text and "253M/253M" in text, text  # tqdm's bar
    assert "pulled acme/tiny-GGUF:tiny-Q8_0 (253 MB" in text
