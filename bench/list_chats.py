"""GET /chats/ with 100,000 chats against the same request with 100 chats, on SQLite and PostgreSQL; and what
accounts cost: a page of 50 with 100,000 chats split among 100 people, asked by one of them, against the same
page with accounts off.

The baselines are measured in the same run: the small table for the first table (its ratio says how much listing
slows down as the table grows, 1.0 = not at all), the 100,000 chats with accounts off for the second (its ratio
says what the ownership check and the key or session cost, 1.0 = nothing).

Run it alone: `.venv/bin/python -m bench list_chats` (`make bench` runs them all). Its table is in
docs/benchmarks.md under "Listing chats: `GET /chats/` as the table grows" (TITLE), after NOTES, which say how each
figure is taken.
"""

import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa

from bench.common import not_measured, postgres_url
from chatapi import create_app
from chatapi.extensions import db
from chatapi.models import Chat
from chatapi.people import User, new_key

SMALL, LARGE = 100, 100_000
PEOPLE = 100
PAGE = "/chats/?limit=50"
ROUNDS = 100


TITLE = "Listing chats: `GET /chats/` as the table grows"
NOTES = """\
`GET /chats/` through the Flask test client (no server, no network), on SQLite and, when it answers at
127.0.0.1:5432, PostgreSQL (when it does not, a bold line above the table says so). Each line is the
median time of one request with 100 chats in the table (the baseline, 200 requests) and with 100,000
chats (50 requests), and their ratio: 1.0 would mean that listing does not slow down at all as the
table grows. *page of 50* is `?limit=50`, *deep page*
`?limit=50&offset=50`, *search* `?q=chat%2099&limit=50`; *all 100,000* is the unpaginated list (3 requests).

The second table is what accounts cost: the same 100,000 chats split among 100 people (1,000 each, interleaved
in time, inserted with their `owner_id`) in a second database, and `GET /chats/?limit=50` asked by one of them,
with their API key (`Authorization: Bearer`) or with the session cookie `POST /session` gave for it, beside the
same request on the first table's 100,000 chats with accounts off (nobody exists, no keys): 100 rounds of the
three in turn, so that the machine's ups and downs fall on each alike; the median (p50) of each, and the ratio
to accounts off (the person's total, `X-Total-Count`, counts their 1,000 chats where accounts off counts all
100,000). Under it, the plan the database chose for the person's page and total (`EXPLAIN QUERY PLAN` on
SQLite, `EXPLAIN` on PostgreSQL, of the statements the request sent)."""


def fill(count: int, first: int = 0, owners: list[int] | None = None) -> None:
    """Chats `first` to `count`, one a second from 2024-01-01; with owners, chat i is owners[i % len(owners)]'s."""
    start = datetime(2024, 1, 1)
    for chunk in range(first, count, 10_000):
        rows = [
            {
                "id": uuid.uuid4(),
                "name": f"chat {i}",
                "created_at": start + timedelta(seconds=i),
                "updated_at": start + timedelta(seconds=i),
                "owner_id": owners[i % len(owners)] if owners else None,
            }
            for i in range(chunk, min(chunk + 10_000, count))
        ]
        db.session.execute(sa.insert(Chat), rows)
    db.session.commit()
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def add_people(count: int) -> list[int]:
    """`count` people, inserted at once (no password: each signs in with a key); their ids."""
    rows = [{"name": f"person{i}", "admin": i == 0} for i in range(count)]
    return list(db.session.scalars(sa.insert(User).returning(User.id), rows))


def request_ms(client, path: str, headers: dict | None = None) -> float:
    start = time.perf_counter()
    response = client.get(path, headers=headers)
    elapsed = (time.perf_counter() - start) * 1000
    assert response.status_code == 200, response.get_data(as_text=True)
    return elapsed


def median_ms(client, path: str, repeat: int) -> float:
    return statistics.median(request_ms(client, path) for _ in range(repeat))


def measure(url: str) -> tuple[dict, object]:
    """The first table's figures by name (small, large), and the app that serves its 100,000 chats."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    client = app.test_client()
    paths = {
        "page of 50": PAGE,
        "deep page": "/chats/?limit=50&offset=50",
        "search": "/chats/?q=chat%2099&limit=50",
    }
    # Requests run outside the set-up's app context, so each ends its own session.
    with app.app_context():
        db.drop_all()
        db.create_all()
        fill(SMALL)
    small = {name: median_ms(client, path, 200) for name, path in paths.items()}
    with app.app_context():
        fill(LARGE, first=SMALL)
    large = {name: median_ms(client, path, 50) for name, path in paths.items()}
    full = median_ms(client, "/chats/", 3)
    results = {}
    for name in paths:
        results[name] = (small[name], large[name])
    results["all 100,000 (no limit)"] = (None, full)
    return results, app


def measure_people(off_app, url: str) -> dict:
    """The page of 50 as one of 100 people, with a key and with a session, in turn with the same page with
    accounts off (off_app); then the plans of the person's page."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        db.drop_all()
        db.create_all()
        owners = add_people(PEOPLE)
        fill(LARGE, owners=owners)
        _, key = new_key(db.session.get(User, owners[1]), "bench")  # not the admin: an ordinary person
        db.session.commit()
    bearer = {"Authorization": f"Bearer {key}"}
    off, with_key, signed_in = off_app.test_client(), app.test_client(), app.test_client()
    assert signed_in.post("/session", json={"key": key}).status_code == 204
    # The rows are the person's own: 50 of their 1,000.
    response = with_key.get(PAGE, headers=bearer)
    assert response.headers["X-Total-Count"] == str(LARGE // PEOPLE), response.headers
    times = {"accounts off": [], "with a key": [], "with a session": []}
    for _ in range(ROUNDS):
        times["accounts off"].append(request_ms(off, PAGE))
        times["with a key"].append(request_ms(with_key, PAGE, bearer))
        times["with a session"].append(request_ms(signed_in, PAGE))
    plans = explain(app, with_key, bearer)
    for each in (app, off_app):
        with each.app_context():
            db.drop_all()
    return {**{name: statistics.median(values) for name, values in times.items()}, "plans": plans}


def explain(app, client, headers: dict) -> list[str]:
    """The plans of the statements on chats that one request for the page sends, as the database reports them."""
    sent = []

    def record(_conn, _cursor, statement, parameters, _context, _executemany):
        if "FROM chats" in statement:
            sent.append((statement, parameters))

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get(PAGE, headers=headers).status_code == 200
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    plans = []
    with engine.connect() as conn:
        for statement, parameters in sent:
            kind = "page" if "LIMIT" in statement.upper() else "total"
            if engine.dialect.name == "sqlite":
                rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
                lines = [row[-1] for row in rows]
            else:
                rows = conn.exec_driver_sql(f"EXPLAIN (COSTS OFF) {statement}", parameters).all()
                lines = [row[0].strip().removeprefix("-> ").strip() for row in rows]
            plans.append(f"{kind}: " + "; ".join(lines))
    return plans


def main() -> str | None:
    """Prints the tables; returns a warning when PostgreSQL was not measured."""
    postgresql, reason = postgres_url()
    folder = tempfile.mkdtemp()
    backends = {
        "sqlite": (f"sqlite:///{folder}/bench.db", f"sqlite:///{folder}/people.db"),
        "postgresql": (postgresql, postgres_url("chatapi_bench_people")[0]),
    }
    measured = {}
    for backend, (url, people_url) in backends.items():
        if url is not None:
            results, off_app = measure(url)
            measured[backend] = results, measure_people(off_app, people_url)
    print(f"GET /chats/: median ms with {SMALL:,} chats (baseline) and {LARGE:,} chats, ratio large/small")
    for backend, (results, _) in measured.items():
        for name, (small, large) in results.items():
            if small is None:
                print(f"{backend:10} {name:24} {large:9.1f} ms")
            else:
                print(f"{backend:10} {name:24} {small:7.2f} -> {large:7.2f} ms  ratio {large / small:5.2f}")
    print()
    print(
        f"GET {PAGE} with {LARGE:,} chats: p50 ms with accounts off (everyone's chats) and as one of {PEOPLE} "
        f"people ({LARGE // PEOPLE:,} chats each), {ROUNDS} rounds in turn, ratio person/off"
    )
    for backend, (_, people) in measured.items():
        off = people["accounts off"]
        print(f"{backend:10} {'accounts off':28} {off:7.2f} ms")
        for name in ("with a key", "with a session"):
            print(f"{backend:10} {'one of 100, ' + name:28} {people[name]:7.2f} ms  ratio {people[name] / off:5.2f}")
        for plan in people["plans"]:
            print(f"{backend:10} plan of the {plan}")
    return None if postgresql else not_measured(reason)
