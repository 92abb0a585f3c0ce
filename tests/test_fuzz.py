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
"""

import re
import subprocess
import sys

import pytest

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


def test_fuzz_without_keys(fuzz_server, tmp_path):
    fuzz(fuzz_server(), tmp_path)


def test_fuzz_with_a_key(fuzz_server, tmp_path):
    fuzz(fuzz_server(**KEYED), tmp_path, KEY_CHECKS, "--header", f"Authorization: Bearer {KEY}")


def test_fuzz_with_keys_and_no_key_sent(fuzz_server, tmp_path):
    """Every operation but the open ones answers the documented 401 (with WWW-Authenticate), whatever else is
    wrong with the request: ignored_auth fails on any success."""
    fuzz(fuzz_server(**KEYED), tmp_path, KEY_CHECKS)
