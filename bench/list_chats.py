"""GET /chats/ with 100,000 chats against the same request with 100 chats, on SQLite and PostgreSQL.

The baseline is the small table, measured in the same run; the ratio says how much listing
slows down as the table grows (1.0 = not at all).

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

SMALL, LARGE = 100, 100_000


TITLE = "Listing chats: `GET /chats/` as the table grows"
NOTES = """\
`GET /chats/` through the Flask test client (no server, no network), on SQLite and, when it answers at
127.0.0.1:5432, PostgreSQL (when it does not, a bold line above the table says so). Each line is the
median time of one request with 100 chats in the table (the baseline, 200 requests) and with 100,000
chats (50 requests), and their ratio: 1.0 would mean that listing does not slow down at all as the
table grows. *page of 50* is `?limit=50`, *deep page*
`?limit=50&offset=50`, *search* `?q=chat%2099&limit=50`; *all 100,000* is the unpaginated list (3 requests)."""


def fill(count: int, first: int = 0) -> None:
    start = datetime(2024, 1, 1)
    for chunk in range(first, count, 10_000):
        rows = [
            {
                "id": uuid.uuid4(),
                "name": f"chat {i}",
                "created_at": start + timedelta(seconds=i),
                "updated_at": start + timedelta(seconds=i),
            }
            for i in range(chunk, min(chunk + 10_000, count))
        ]
        db.session.execute(sa.insert(Chat), rows)
    db.session.commit()
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def median_ms(client, path: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200
    return statistics.median(times)


def measure(url: str) -> dict:
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    client = app.test_client()
    paths = {
        "page of 50": "/chats/?limit=50",
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
    with app.app_context():
        db.drop_all()
    results = {}
    for name in paths:
        results[name] = (small[name], large[name])
    results["all 100,000 (no limit)"] = (None, full)
    return results


def main() -> str | None:
    """Prints the table; returns a warning when PostgreSQL was not measured."""
    postgresql, reason = postgres_url()
    backends = {"sqlite": f"sqlite:///{tempfile.mkdtemp()}/bench.db", "postgresql": postgresql}
    print(f"GET /chats/: median ms with {SMALL:,} chats (baseline) and {LARGE:,} chats, ratio large/small")
    for backend, url in backends.items():
        if url is None:
            continue
        for name, (small, large) in measure(url).items():
            if small is None:
                print(f"{backend:10} {name:24} {large:9.1f} ms")
            else:
                print(f"{backend:10} {name:24} {small:7.2f} -> {large:7.2f} ms  ratio {large / small:5.2f}")
    return None if postgresql else not_measured(reason)
