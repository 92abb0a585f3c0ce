"""`flask users ...` and `flask keys ...` (chatapi/cli.py): run as a person or a script runs them (the real `flask`
in a process of its own, on a pipe or a terminal), and their effect seen through the API. The rest through click's
runner, in process, where a process of its own would show nothing more."""

import itertools
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatapi import cli, create_app, people
from chatapi.extensions import db
from tests.support.server import ROOT

FLASK = Path(sys.executable).parent / "flask"
PASSWORD = "correct horse battery"
NEW_PASSWORD = "staple of the horse"


def flask(database_url: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """`flask ARGS` on the database, standard input a pipe holding `input`; its output as text."""
    return subprocess.run(
        [str(FLASK), *args], cwd=ROOT, env=environment(database_url), input=input or "", text=True,
        capture_output=True, timeout=60,
    )


def environment(database_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAPI_API_KEYS")}
    return dict(env, FLASK_APP="wsgi", DATABASE_URL=database_url)


def on_terminal(database_url: str, args: list[str], answers: list[tuple[str, str]]) -> tuple[int, str]:
    """`flask ARGS` on a pseudo-terminal (no controlling terminal: getpass uses standard input, as it would the
    terminal's), typing each answer once its prompt shows; its exit code and all the terminal showed."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(FLASK), *args], cwd=ROOT, env=environment(database_url), stdin=terminal, stdout=terminal,
        stderr=terminal, start_new_session=True,
    )
    os.close(terminal)
    shown = b""
    try:
        for prompt, answer in answers:
            shown = read_until(controller, shown, prompt.encode())
            os.write(controller, answer.encode() + b"\n")
        shown = read_until(controller, shown, None)
        return process.wait(timeout=30), shown.decode(errors="replace")
    finally:
        process.kill()
        os.close(controller)


def read_until(controller: int, shown: bytes, wanted: bytes | None, seconds: float = 60) -> bytes:
    """What the terminal showed, read until `wanted` shows after what was already `shown` (None: until it closes)."""
    start, deadline = len(shown), time.monotonic() + seconds
    while wanted is None or wanted not in shown[start:]:
        assert time.monotonic() < deadline, f"waited for {wanted!r}; the terminal showed {shown!r}"
        if not select.select([controller], [], [], 0.1)[0]:
            continue
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: every process let go of the terminal
            chunk = b""
        if not chunk:
            assert wanted is None, f"the terminal closed before {wanted!r}: {shown!r}"
            return shown
        shown += chunk
    return shown


ADDRESSES = itertools.count(1)


def own_client(app):
    """A test client from an address of its own: the refusals these tests cause on purpose (a wrong password, a
    revoked key) must not add up, with other modules' on the same app, to the limit on them per address."""
    n = next(ADDRESSES)
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = f"127.1.{n // 250}.{n % 250 + 1}"
    return client


def sign_in(app, name: str, password: str):
    """A client of its own that signed in with name and password, and the answer to that."""
    client = own_client(app)
    return client, client.post("/session", json={"name": name, "password": password})


def signs_in(app, name: str, password: str) -> bool:
    client, response = sign_in(app, name, password)
    assert response.status_code in (204, 401), response.json
    return response.status_code == 204


def me_with_key(app, key: str):
    return own_client(app).get("/me", headers={"Authorization": f"Bearer {key}"})


def add_person(app, name: str, password: str = PASSWORD, admin: bool = False) -> int:
    with app.app_context():
        user = people.create_user(name, password, admin=admin)
        db.session.commit()
        return user.id


def add_key(app, name: str, label: str = "") -> tuple[int, str]:
    with app.app_context():
        key, secret = people.new_key(people.find_user(name), label)
        db.session.commit()
        return key.id, secret


@pytest.fixture
def runner(app, client):
    """click's runner on the app (and `client`, whose end empties the tables)."""
    return app.test_cli_runner()


def succeeded(result) -> str:
    assert result.exit_code == 0 and result.exception is None, (result.output, result.exception)
    return result.stdout


def refused(result) -> str:
    """The one line a refusal writes to standard error; no traceback (an exception click did not turn into an exit
    would be in result.exception)."""
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_create_reads_the_password_from_a_pipe_and_the_person_signs_in(app, client, database_url):
    before = client.post("/chats/create", json={"name": "made while nobody existed"})
    assert before.status_code == 201, before.json
    created = flask(database_url, "users", "create", "Alice", "--admin", input=f"{PASSWORD}\n")
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines() == [created.stdout.splitlines()[0]] and "alice" in created.stdout
    assert created.stderr == ""  # nothing asked

    signed_in, response = sign_in(app, "alice", PASSWORD)
    assert response.status_code == 204, response.json
    me = signed_in.get("/me")
    assert me.status_code == 200 and me.json["name"] == "alice" and me.json["admin"] is True
    theirs = [chat["id"] for chat in signed_in.get("/chats/?limit=1000").json]
    assert before.json["id"] in theirs  # the first admin's now
    assert not signs_in(app, "alice", PASSWORD + "x")


def test_on_a_terminal_the_password_is_asked_twice_and_not_shown(app, client, database_url):
    code, shown = on_terminal(
        database_url, ["users", "create", "bob"], [("Password:", PASSWORD), ("Repeat for confirmation:", PASSWORD)]
    )
    assert code == 0, shown
    assert PASSWORD not in shown and "created bob" in shown
    assert signs_in(app, "bob", PASSWORD)


def test_the_confirmation_must_match(app, runner, monkeypatch):
    monkeypatch.setattr(cli, "stdin_is_terminal", lambda: True)
    mismatch = runner.invoke(args=["users", "create", "carol"], input=f"{PASSWORD}\n{NEW_PASSWORD}\n")
    assert mismatch.exit_code != 0 and isinstance(mismatch.exception, SystemExit)
    assert "do not match" in mismatch.output and PASSWORD not in mismatch.output
    with app.app_context():
        assert people.find_user("carol") is None

    matched = runner.invoke(args=["users", "create", "carol"], input=f"{PASSWORD}\n{PASSWORD}\n")
    succeeded(matched)
    assert matched.output.count("Password") == 1 and "Repeat for confirmation" in matched.output
    assert PASSWORD not in matched.output
    assert signs_in(app, "carol", PASSWORD)


def test_list_shows_everyone_without_secrets(app, runner):
    add_person(app, "dave", admin=True)
    add_person(app, "erin")
    succeeded(runner.invoke(args=["users", "disable", "erin"]))

    lines = succeeded(runner.invoke(args=["users", "list"])).splitlines()
    assert lines[0].split() == ["id", "name", "admin", "created", "disabled"]
    rows = [line.split() for line in lines[1:]]
    assert [row[1:3] for row in rows] == [["dave", "yes"], ["erin", "no"]]
    assert rows[0][-1] == "-" and rows[1][-1] != "-"  # erin's disabled time
    assert len(rows[0]) == 6 and len(rows[1]) == 7  # id, name, admin, created (date and time), disabled (one or two)
    assert "argon2" not in "\n".join(lines)


def test_set_password_replaces_the_old_one_and_ends_the_sessions(app, runner):
    add_person(app, "frank")
    session, response = sign_in(app, "frank", PASSWORD)
    assert response.status_code == 204 and session.get("/me").status_code == 200

    succeeded(runner.invoke(args=["users", "set-password", "frank"], input=f"{NEW_PASSWORD}\n"))
    assert session.get("/me").status_code == 401
    assert not signs_in(app, "frank", PASSWORD)
    assert signs_in(app, "frank", NEW_PASSWORD)


def test_disable_stops_sign_in_keys_and_sessions(app, runner):
    add_person(app, "grace")
    _, secret = add_key(app, "grace")
    session, response = sign_in(app, "grace", PASSWORD)
    assert response.status_code == 204 and session.get("/me").status_code == 200
    assert me_with_key(app, secret).status_code == 200

    succeeded(runner.invoke(args=["users", "disable", "grace"]))
    assert session.get("/me").status_code == 401
    assert me_with_key(app, secret).status_code == 401
    assert not signs_in(app, "grace", PASSWORD)
    assert "already disabled" in succeeded(runner.invoke(args=["users", "disable", "grace"]))


def test_the_last_active_admin_is_not_disabled(app, runner):
    add_person(app, "kim", admin=True)
    assert "last active admin" in refused(runner.invoke(args=["users", "disable", "kim"]))
    assert signs_in(app, "kim", PASSWORD)

    add_person(app, "lee", admin=True)
    succeeded(runner.invoke(args=["users", "disable", "kim"]))
    assert not signs_in(app, "kim", PASSWORD)


def test_keys_create_prints_the_key_alone_on_the_last_line(app, client, database_url):
    add_person(app, "heidi")
    created = flask(database_url, "keys", "create", "heidi", "--label", "my laptop")
    assert created.returncode == 0, created.stderr
    key = created.stdout.splitlines()[-1]
    assert key.startswith("chatapi-") and " " not in key and created.stdout.endswith(key + "\n")

    me = me_with_key(app, key)
    assert me.status_code == 200 and me.json["name"] == "heidi"
    with app.app_context():
        [row] = db.session.scalars(db.select(people.ApiKey)).all()
        assert row.label == "my laptop" and key.startswith(row.prefix)


def test_keys_list_never_shows_the_secret(app, runner):
    add_person(app, "ivan")
    first, secret = add_key(app, "ivan", "phone")
    second, other = add_key(app, "ivan")
    assert me_with_key(app, secret).status_code == 200  # used: a last-used time
    succeeded(runner.invoke(args=["keys", "revoke", str(second)]))

    listed = succeeded(runner.invoke(args=["keys", "list", "ivan"]))
    assert secret not in listed and other not in listed
    header, *rows = listed.splitlines()
    assert header.split() == ["id", "prefix", "label", "created", "last", "used", "revoked"]
    assert [row.split()[:3] for row in rows] == [[str(first), secret[:12], "phone"], [str(second), other[:12], "-"]]
    assert rows[0].split()[-1] == "-" and rows[1].split()[-1] != "-"  # only the second is revoked
    assert rows[0].split()[5] != "-" and rows[1].split()[5] == "-"  # only the first was used


def test_revoke_stops_the_key_at_once(app, runner):
    add_person(app, "judy")
    key_id, secret = add_key(app, "judy")
    assert me_with_key(app, secret).status_code == 200
    assert "revoked" in succeeded(runner.invoke(args=["keys", "revoke", str(key_id)]))
    assert me_with_key(app, secret).status_code == 401
    assert "already revoked" in succeeded(runner.invoke(args=["keys", "revoke", str(key_id)]))


@pytest.mark.parametrize(
    "args, input, says",
    [
        (["users", "create", "mallory"], f"{PASSWORD}\n", "taken"),
        (["users", "create", "no spaces"], f"{PASSWORD}\n", "name"),
        (["users", "create", "newcomer"], "short\n", "password"),
        (["users", "create", "newcomer"], "", "standard input"),
        (["users", "set-password", "nobody"], f"{PASSWORD}\n", "nobody"),
        (["users", "set-password", "mallory"], "short\n", "password"),
        (["users", "disable", "nobody"], None, "nobody"),
        (["keys", "create", "nobody"], None, "nobody"),
        (["keys", "create", "mallory", "--label", "x" * 101], None, "label"),
        (["keys", "list", "nobody"], None, "nobody"),
        (["keys", "revoke", "999999"], None, "999999"),
        (["keys", "revoke", "abc"], None, "abc"),
    ],
)
def test_a_refusal_is_one_line_on_stderr(app, runner, args, input, says):
    add_person(app, "mallory")
    before = succeeded(runner.invoke(args=["users", "list"]))
    line = refused(runner.invoke(args=args, input=input))
    assert says in line.lower()
    assert succeeded(runner.invoke(args=["users", "list"])) == before  # nothing changed
    with app.app_context():  # the password too (not through the API: a sign-in per case would meet its limit)
        assert people.verify_password(people.find_user("mallory").password_hash, PASSWORD)


def test_a_refusal_from_the_real_command_has_no_traceback(app, client, database_url):
    add_person(app, "oscar")
    taken = flask(database_url, "users", "create", "oscar", input=f"{PASSWORD}\n")
    assert taken.returncode != 0 and taken.stdout == ""
    assert len(taken.stderr.splitlines()) == 1 and "Traceback" not in taken.stderr, taken.stderr


def test_an_unmigrated_sqlite_database_is_named_in_one_line(tmp_path):
    empty = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/empty.db"})
    line = refused(empty.test_cli_runner().invoke(args=["users", "list"]))
    assert "flask db upgrade" in line
