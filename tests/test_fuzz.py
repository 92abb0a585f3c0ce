"""schemathesis against the real server's own /openapi.json, on both databases, with keys and without: no 5xx
anywhere, and every response as the document says (status, content type, body, headers, each event of a stream).

schemathesis runs as its command line does (`st run`): each operation gets its documented examples, the
coverage phase's boundary and invalid values, and EXAMPLES random requests; then the stateful phase chains
operations through the ids they return (create a chat, rename it, add a message, stream a reply...), which is
how a fuzzer reaches rows that exist. (Its pytest plugin cannot load the document from a fixture on the pinned
pytest 9.2: it sets Node._nodeid, which pytest no longer has.)

The streams cost the model little: schemathesis reads 20 events of a stream and hangs up, the server stops a
reply nobody listens to after CHATAPI_GRACE_SECONDS (1 s here), and replies are short (CHATAPI_MAX_TOKENS) unless
a fuzzed max_tokens says otherwise. Internet mode's search goes to the local test web's broken page, so that it
fails at once (a `warning` event) and nothing leaves the machine.

Accounts (/me, /users, /session) are in the document, so in every run. A run must not lock itself out, or what
follows it would be 401s that prove nothing: the open run leaves out `POST /users` (open while nobody exists, it
would make the first person and turn accounts on); the run with a CHATAPI_API_KEYS key cannot (that key's admin,
`admin`, is made again, an admin and active, on its next use, and the last active admin can be neither deleted,
disabled nor demoted: 409); the run with a person's own key leaves out what could take that key away (revoking
it, deleting or disabling the person once the fuzzer has made another admin). Each keyed run ends by checking that
its key still works.
"""

import re
import subprocess
import sys

import pytest
import requests

from chatapi import people
from chatapi.extensions import db
from tests.support.server import FAST_STREAM_SETTINGS

KEY = "fuzz-test-key-0123456789"  # at least 16 characters, as the server wants
EXAMPLES = 15
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
# With keys on, also: a request that succeeds with the key fails without it and with a wrong one (401), and a
# request that comes with no key never succeeds.
KEY_CHECKS = CHECKS + ("ignored_auth",)
# ignored_auth sends a wrong key to every operation, from one address: the limit on wrong keys is tested elsewhere.
KEYED = {"CHATAPI_API_KEYS": KEY, "CHATAPI_RATE_LIMIT_AUTH_FAILURES": "100000/minute"}
# Nobody exists on the open run's server: POST /users would make the first person and close the box.
OPEN_RUN = ("--exclude-name", "POST /users")
# What could take a person's own key away from the run that fuzzes with it.
PERSON_RUN = tuple(
    option
    for name in ("DELETE /me/keys/{key_id}", "PUT /users/{user_id}", "DELETE /users/{user_id}")
    for option in ("--exclude-name", name)
)


@pytest.fixture
def fuzz_server(start_server, client, web):
    """Starts a server to fuzz with the given settings; `client` empties the tables afterwards."""

    def start(**settings: str) -> str:
        search = f"{web.url}/broken"
        return start_server(CHATAPI_MAX_TOKENS="8", CHATAPI_SEARCH_URL=search, **FAST_STREAM_SETTINGS, **settings).url

    return start


def fuzz(base_url: str, workdir, checks=CHECKS, *options: str) -> None:
    """Run schemathesis against the server's document; its report is the failure message."""
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json"),
        *("--checks", ",".join(checks), "--max-examples", str(EXAMPLES)),
        *("--generation-database", "none", "--request-timeout", "30", "--workers", "1", "--no-color"),
        *options,
    ]
    run = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-30000:] + run.stderr[-5000:]
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated and int(generated[1]) > 100, run.stdout


def still_works(base_url: str, key: str) -> None:
    """The run did not lock itself out: its key still says who is asking, an admin."""
    me = requests.get(f"{base_url}/me", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert me.status_code == 200 and me.json()["admin"] is True, me.text


def test_fuzz_without_keys(fuzz_server, tmp_path):
    base_url = fuzz_server()
    fuzz(base_url, tmp_path, CHECKS, *OPEN_RUN)
    assert requests.get(f"{base_url}/me", timeout=10).status_code == 404  # still open: nobody was made


def test_fuzz_with_a_key(fuzz_server, tmp_path):
    base_url = fuzz_server(**KEYED)
    fuzz(base_url, tmp_path, KEY_CHECKS, "--header", f"Authorization: Bearer {KEY}")
    still_works(base_url, KEY)


def test_fuzz_with_a_persons_key(app, fuzz_server, tmp_path):
    """No CHATAPI_API_KEYS: an admin made as `flask users create` makes one, fuzzing with a key of their own."""
    with app.app_context():
        admin = people.create_user("fuzzer", "fuzz-password-0123", admin=True)
        _, key = people.new_key(admin, "fuzz")
        db.session.commit()
    base_url = fuzz_server(CHATAPI_RATE_LIMIT_AUTH_FAILURES="100000/minute")
    fuzz(base_url, tmp_path, KEY_CHECKS, "--header", f"Authorization: Bearer {key}", *PERSON_RUN)
    still_works(base_url, key)


def test_fuzz_with_keys_and_no_key_sent(fuzz_server, tmp_path):
    """Every operation but the open ones answers the documented 401 (with WWW-Authenticate), whatever else is
    wrong with the request: ignored_auth fails on any success."""
    fuzz(fuzz_server(**KEYED), tmp_path, KEY_CHECKS)
