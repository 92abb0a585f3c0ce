"""Load: 50 clients for 30 s against the real server on 127.0.0.1, on SQLite and on PostgreSQL.

locust, headless, runs the clients of bench/locustfile.py in a process of its own. Afterwards the runner counts
the answers (no 5xx, no request without one), looks for every acknowledged write in the database (none lost),
and reads the server's log for "database is locked". tests/test_load.py runs the same and asserts on it.

The baseline is the streaming clients alone, for ALONE_SECONDS on the same server just before: their replies' time
without the API requests beside them.
Run it alone: `.venv/bin/python -m bench load` (`make bench` runs them all). Its table is in docs/benchmarks.md
under "Load: 50 clients, SQLite and PostgreSQL" (TITLE), after NOTES, which say how each figure is taken.
"""

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import sqlalchemy as sa

from bench.common import not_measured, percentile, postgres_url
from chatapi import create_app
from chatapi.extensions import db
from chatapi.models import Chat, Conversation
from tests.support.server import Server

USERS, SECONDS, STREAMS = 50, 30, 3
ALONE_SECONDS = 15  # the streaming clients alone, first: their replies' time without the API load beside them
# locust takes a core of its own: the model gets one fewer, as docs/configuration.md advises for a shared box.
SERVER_SETTINGS = {"CHATAPI_N_THREADS": str(max(1, (os.cpu_count() or 2) - 1))}
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
LOCKED = "database is locked"


TITLE = "Load: 50 clients, SQLite and PostgreSQL"
# locust's version without `import locust`, which monkey-patches the process for gevent.
NOTES = f"""\
The real server (gunicorn, one gevent worker; the model with `CHATAPI_N_THREADS` one fewer than the cores,
since locust needs one) on 127.0.0.1 with a fresh database, SQLite and PostgreSQL. `bench/load.py` runs locust
{version("locust")} headless with the clients of `bench/locustfile.py`: {USERS} for {SECONDS} s,
all started in the first second, none pausing between requests. {USERS - STREAMS} create chats, add
messages (Human or Assistant) to their chats, list (`?limit=20`), search (`?q=`), and read chats and their
messages (weights 1, 4, 3, 1, 2, 2); {STREAMS} add a Human message, read the reply's stream to `done`
(`max_tokens=16`) and start again.

*requests*, *req/s*, *p50*, *p99*: the API requests (not the streams), nearest rank. *replies*: how many were
streamed, and the median time from request to `done`; *alone*: the same median with the {STREAMS} streaming
clients alone, for {ALONE_SECONDS} s on the same server just before. Afterwards every write the server
acknowledged (*writes*: each 201, and each reply its `done` said was saved) is looked for in the database
(*lost*: not found); *5xx* counts server errors and requests without an answer, *locked* the times the
server's log says "database is locked", and *load* is the machine's 1-minute load average as the run started
(other programs on the same cores). `tests/test_load.py` runs the same in `make test` (without *alone*) and
asserts that 5xx, lost and locked are 0."""


@dataclass
class Outcome:
    """What one run did and what it left in the database."""

    seconds: float
    times: dict[str, list[float]]  # request name -> response times (ms)
    statuses: Counter  # status -> requests (0: no answer)
    server_errors: list[str]  # 5xx bodies and requests without an answer, as locust saw them
    written: int  # writes the server acknowledged
    lost: list[str]  # acknowledged writes that are not rows
    locked: int  # "database is locked" in the server's log
    machine_load: float  # the 1-minute load average as the run started: other programs on the same cores

    @property
    def api_times(self) -> list[float]:
        """Every request's time but the streams'."""
        return [ms for name, times in self.times.items() if not name.startswith("stream:") for ms in times]

    @property
    def replies(self) -> list[float]:
        return self.times.get("stream: request to done", [])

    @property
    def server_failures(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500 or status == 0)


def run(server: Server, database_url: str, users: int = USERS, seconds: int = SECONDS) -> Outcome:
    """Run the clients against the server, then count what the database holds of their writes."""
    machine_load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        record_path = Path(scratch) / "record.json"
        command = [
            *(sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--headless", "--host", server.url),
            *("--users", users, "--spawn-rate", users, "--run-time", f"{seconds}s"),
            # Clients finish what they are doing: a write cut off in flight would be neither acknowledged nor lost.
            *("--stop-timeout", 60, "--only-summary", "--loglevel", "WARNING"),
        ]
        env = dict(os.environ, CHATAPI_LOAD_RECORD=str(record_path), CHATAPI_LOAD_STREAMS=str(STREAMS))
        command = list(map(str, command))
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 180)
        if not record_path.exists():
            raise RuntimeError(f"locust failed ({finished.returncode}):\n{finished.stdout}\n{finished.stderr}")
        record = json.loads(record_path.read_text())
    times: dict[str, list[float]] = {}
    for name, ms in record["times"]:
        times.setdefault(name, []).append(ms)
    written = record["written"]
    return Outcome(
        seconds=record["ended"] - record["started"],
        times=times,
        statuses=Counter({int(status): count for status, count in record["statuses"].items()}),
        server_errors=record["server_errors"],
        written=len(written["chats"]) + len(written["conversations"]),
        lost=missing_rows(database_url, written),
        locked=server.output().count(LOCKED),
        machine_load=machine_load,
    )


def missing_rows(database_url: str, written: dict[str, list[str]]) -> list[str]:
    """The acknowledged writes that the database does not hold."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        rows = {
            "chats": set(db.session.scalars(sa.select(Chat.id))),
            "conversations": set(db.session.scalars(sa.select(Conversation.id))),
        }
        db.session.remove()
        db.engine.dispose()
    return [f"{kind} {ident}" for kind, ids in written.items() for ident in ids if uuid.UUID(ident) not in rows[kind]]


def report(backend: str, outcome: Outcome, alone: Outcome | None = None) -> None:
    """One line of the table; `alone` is a run of the streaming clients only, for their replies' time."""
    api, replies = outcome.api_times, outcome.replies
    replies_alone = percentile(alone.replies, 50) if alone else float("nan")
    print(
        f"{backend:10} {len(api):8} {len(api) / outcome.seconds:7.1f} {percentile(api, 50):7.1f} "
        f"{percentile(api, 99):7.1f} {len(replies):7} {percentile(replies, 50):9.0f} {replies_alone:9.0f} "
        f"{outcome.server_failures:5} {outcome.written:7} {len(outcome.lost):5} {outcome.locked:7} "
        f"{outcome.machine_load:5.1f}"
    )


def measure(backend: str, url: str, log_dir: Path) -> Outcome:
    """A fresh schema, a server, the streaming clients alone, then the whole load; prints its line."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        db.drop_all()
        db.create_all()
        db.engine.dispose()
    server = Server(url, log_dir / f"gunicorn-{backend}.log", **SERVER_SETTINGS).wait_until_up()
    try:
        alone = run(server, url, users=STREAMS, seconds=ALONE_SECONDS)  # the streaming clients only
        outcome = run(server, url)
    finally:
        server.stop()
    report(backend, outcome, alone)
    return outcome


def main() -> str | None:
    """Prints the table; returns a warning when PostgreSQL was not measured."""
    postgresql, reason = postgres_url()
    scratch = Path(tempfile.mkdtemp())
    backends = {"sqlite": f"sqlite:///{scratch}/load.db", "postgresql": postgresql}
    print(
        f"{USERS} clients ({USERS - STREAMS} API, {STREAMS} streaming replies) for {SECONDS} s, locust headless; "
        "API requests: count, per second, p50 and p99 ms; replies: count, p50 ms request to done, and the same "
        f"with the {STREAMS} streaming clients alone ({ALONE_SECONDS} s before)"
    )
    print(
        f"{'backend':10} {'requests':>8} {'req/s':>7} {'p50':>7} {'p99':>7} {'replies':>7} {'reply p50':>9} "
        f"{'alone':>9} {'5xx':>5} {'writes':>7} {'lost':>5} {'locked':>7} {'load':>5}"
    )
    outcomes = {}
    for backend, url in backends.items():
        if url is not None:
            outcomes[backend] = measure(backend, url, scratch)
    for backend, outcome in outcomes.items():
        print(f"\n{backend}, per request: count, p50 and p99 ms")
        for name, times in sorted(outcome.times.items()):
            print(f"  {name:46} {len(times):7} {percentile(times, 50):8.1f} {percentile(times, 99):8.1f}")
    return None if postgresql else not_measured(reason)


if __name__ == "__main__":
    main()
