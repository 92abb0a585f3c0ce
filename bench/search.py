"""GET /search at a million messages: 100,000 chats with 1,000,000 messages on SQLite and PostgreSQL, the search
for a rare word, two common words and a phrase beside today's name-only `GET /chats/?q=`, and what the index adds
to the cost of a write (`POST /conversations/create` with the index, without it, and with it again).

The database is built by the migrations (the real schema, the index included) and filled by bulk inserts in SQL
(executemany on SQLite, COPY on PostgreSQL), so that the index is kept by its own machinery on every row: the
FTS5 triggers on SQLite, the generated tsvector column and its GIN index on PostgreSQL. Accounts are off (nobody
exists): every search looks at all 1,000,000 messages, the most any one person could have. Then, after the writes,
the chats are shared out among 100 people and the searches run again as one of them.

Run it alone: `.venv/bin/python -m bench search` (`make bench` runs them all). Its table is in docs/benchmarks.md
under "Search at a million messages" (TITLE), after NOTES, which say how each figure is taken.
"""

import itertools
import os
import random
import re
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from urllib.parse import quote

import flask_migrate
import psycopg
import sqlalchemy as sa

from bench.common import EXCHANGES, FINAL_QUESTION, FOLLOW_UP, not_measured, percentile
from chatapi import create_app, people, search_index
from chatapi.extensions import db
from tests.support.scratch import create_database, drop_database
from tests.support.server import ROOT

CHATS, PER_CHAT = 100_000, 10  # 1,000,000 messages
BATCH = 5_000  # chats a transaction
RARE = "Quetzalcóatl"  # in RARE_MESSAGES messages and one chat's name, nowhere else
RARE_MESSAGES = 5
COMMON_WORDS = "time people"  # in 8% and 5% of the messages; both in 0.5%
PHRASE = '"the people"'  # "the": in most messages
WARM_UP, REQUESTS = 5, 50  # a query's warm-up requests, then its measured ones
WRITES = 200  # POST /conversations/create in each of the three phases
PEOPLE = 100  # with accounts on, the chats are shared out among so many people (1,000 chats each)
SEED = 26
RARE_GOAL_MS, WRITE_GOAL = 50, 1.5  # issue 26

TITLE = "Search at a million messages"
NOTES = f"""\
`GET /search` and `GET /chats/?q=` through the Flask test client (no server, no network) on {CHATS:,} chats with
{CHATS * PER_CHAT:,} messages ({PER_CHAT} a chat, Human and Assistant in turn), on SQLite and, when it answers at
127.0.0.1:5432, PostgreSQL (when it does not, a bold line above the table says so). Accounts are off (nobody
exists), so every search looks at all the messages: the most any one person could have. The lines *one of
{PEOPLE} people* come last: the chats shared out among {PEOPLE} people ({CHATS // PEOPLE:,} chats each), the same
requests with a key of the person who has the chat named with the rare word, so that only their own chats are
searched (the others' are left out through the owner index).

The schema is the migrations' (the index included), and the rows go in by bulk inserts in SQL (`executemany` on
SQLite, `COPY` on PostgreSQL), so that the index is kept on every row by its own machinery: the FTS5 triggers on
SQLite, the generated `tsvector` column and its GIN index on PostgreSQL; then `ANALYZE` (PostgreSQL: `VACUUM
ANALYZE`, as autovacuum would). *seeding* is the time of all that, text made on the way included. The text: a
vocabulary of 5,000 words (English's most common words first, then the words of the prose in bench/common.py,
then made-up ones, one in 33 of these with letters beyond ASCII: café, Zürich, Москва, kalömi...) drawn with a
Zipf-Mandelbrot distribution (weight 1 / (rank + 2.7)), in sentences of 6 to 20 words; Human messages of one or
two sentences, Assistant messages of two to six (36 words a message on average). *{RARE.lower()}* (not in the
vocabulary) is planted in {RARE_MESSAGES} messages and in one chat's name.

Each query: {WARM_UP} requests of warm-up, then {REQUESTS} measured, the queries in turn round by round so that the
machine's ups and downs fall on each alike; p50 and p95 (nearest rank) in ms, and the hits (`X-Total-Count`).
*rare word* is `/search?q={RARE.lower()}`; *two common words* `{COMMON_WORDS}` (in 8% and 5% of the messages, both
in 0.5%); *phrase* `{PHRASE}` ("the" is in most messages); *name only* today's `GET /chats/?q=` for the rare word
(a `LIKE` scan of the chats' names), `limit=20` as `/search`'s default page.

The write cost: `POST /conversations/create` to random chats ({WRITES} messages like the seeded ones a phase) with
the index, then without it (`chatapi.search_index.drop()`), then with it again (`search_index.create()`, which
fills it from the rows there are, as migration 0007 does: *re-create* is its time); p50 and p95, and the ratio of
the p50 with the index (both phases together) to the p50 without. Goals (issue 26): p95 under {RARE_GOAL_MS} ms for
the rare word, the write cost under {WRITE_GOAL}x; each line says "met" or "MISSED". On PostgreSQL a write adds its
words to the GIN index's pending list, which the write that fills it (4 MB by default: thousands of messages) or
autovacuum moves into the index: {WRITES} writes a phase do not reach it, so that cost, paid once in thousands of
writes, is not in these figures.

*machine load* is the 1-minute load average before and after the searches: on a machine that other work shares,
a load above its core count means the figures include waiting for a core. Under the table, the plans the database
chose for each statement the rare word's request sends, in their order (*page*: the ranked page, *count*: the total,
*rows*: the page's rows read whole), by `EXPLAIN QUERY PLAN` on SQLite and `EXPLAIN ANALYZE` on PostgreSQL, each
node with the rows the planner expected and the rows it got: a misestimate is where a slow plan comes from."""

# The most common English words, most common first: the head of the distribution.
COMMON = """the of and to a in is it you that he was for on are with as i his they be at one have this from or had
by not word but what some we can out other were all there when up use your how said an each she which do their time
if will way about many then them write would like so these her long make thing see him two has look more day could
go come did number sound no most people my over know water than call first who may down side been now find any new
work part take get place made live where after back little only round man year came show every good me give our
under name very through just form sentence great think say help low line differ turn cause much mean before move
right boy old too same tell does set three want air well also play small end put home read hand port large spell add
even land here must big high such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father head stand own page should country found answer school grow
study still learn plant cover food sun four between state keep eye never last let thought city tree cross farm hard
start might story saw far sea draw left late run while press close night real life few north""".split()
ACCENTED = """café naïve jalapeño Zürich Straße façade résumé über déjà señor smörgåsbord crème brûlée fiancée piñata
doppelgänger привет Москва Ελλάδα λόγος Ærø Øresund Kraków Łódź São Göteborg Málaga Reykjavík naïveté entrée soufflé
protégé mañana jäger Fußball Ölkanne crêpe garçon Besançon Curaçao Ålesund Tromsø Düsseldorf Dvořák Škoda Čapek
Gdańsk Poznań Bogotá Medellín Córdoba Mühle Käse Brötchen Frühling Schönheit""".split()
SYLLABLES = (
    "ka lo mi ter vin sol ra den ur pha bel gor tis nu fe ban cro dal em os quin ril sar tu vek wen yo zam".split()
)


def vocabulary() -> list[str]:
    """About 5,000 distinct words, the most common first."""
    words = list(dict.fromkeys(COMMON))
    prose = " ".join([FINAL_QUESTION, FOLLOW_UP, *itertools.chain.from_iterable(EXCHANGES)]).lower()
    words += [w for w in dict.fromkeys(re.findall(r"[a-z]+", prose)) if w not in words]
    made_up = ("".join(parts) for n in (2, 3) for parts in itertools.product(SYLLABLES, repeat=n))
    accented = iter(ACCENTED)
    seen = set(words)
    while len(words) < 5_000:
        word = next(made_up)
        if len(words) % 33 == 0:  # one word in 33 beyond the common ones has letters beyond ASCII
            word = next(accented, None) or accent(word)
        if word.lower() not in seen:
            seen.add(word.lower())
            words.append(word)
    return words


def accent(word: str) -> str:
    """The made-up word with its first vowel accented."""
    at = next(i for i, letter in enumerate(word) if letter in "aeiou")
    return word[:at] + "áéíöü"["aeiou".index(word[at])] + word[at + 1 :]


class Text:
    """Sentences and messages drawn from the vocabulary (Zipf-Mandelbrot: weight 1 / (rank + 2.7))."""

    def __init__(self, seed: int = SEED):
        self.words = vocabulary()
        self.cum_weights = list(itertools.accumulate(1 / (rank + 2.7) for rank in range(len(self.words))))
        self.random = random.Random(seed)
        self.pool: list[str] = []
        self.at = 0

    def draw(self, count: int) -> list[str]:
        if self.at + count > len(self.pool):
            self.pool = self.random.choices(self.words, cum_weights=self.cum_weights, k=max(count, 500_000))
            self.at = 0
        self.at += count
        return self.pool[self.at - count : self.at]

    def sentence(self, low: int = 6, high: int = 20) -> str:
        words = self.draw(self.random.randint(low, high))
        ending = "?" if self.random.random() < 0.15 else "."
        return words[0][:1].upper() + words[0][1:] + " " + " ".join(words[1:]) + ending

    def message(self, role: str) -> str:
        count = self.random.randint(1, 2) if role == "Human" else self.random.randint(2, 6)
        return " ".join(self.sentence() for _ in range(count))

    def name(self) -> str:
        return self.sentence(2, 5).rstrip(".?")


# Seeding


def seed(app, text: Text) -> tuple[float, list[str]]:
    """The schema by the migrations, then the chats and their messages in bulk; the seconds it took, and the
    ids of the chats that get the benchmark's writes."""
    started = time.perf_counter()
    with app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        engine = db.engine
    chooser = random.Random(SEED)
    total = CHATS * PER_CHAT
    planted = set(chooser.sample(range(total), RARE_MESSAGES))
    start = datetime(2024, 1, 1)
    written_to = []
    conn = engine.raw_connection()  # the DB-API connection, for executemany and COPY
    try:
        insert = bulk_sqlite if engine.dialect.name == "sqlite" else bulk_postgres
        for first in range(0, CHATS, BATCH):
            chats, messages = [], []
            for i in range(first, min(first + BATCH, CHATS)):
                chat_id, created = uuid.uuid4(), start + timedelta(minutes=i)
                name = text.name()
                if i == CHATS // 3:
                    name = f"{name} {RARE}"
                for j in range(PER_CHAT):
                    role = ("Human", "Assistant")[j % 2]
                    message = text.message(role)
                    if i * PER_CHAT + j in planted:
                        words = message.split(" ")
                        words[len(words) // 2] = RARE
                        message = " ".join(words)
                    at = created + timedelta(seconds=5 * j)
                    messages.append((uuid.uuid4(), chat_id, role, message, at, at))
                chats.append((chat_id, name, created, at))
                if i % (CHATS // 1_000) == 0:
                    written_to.append(str(chat_id))
            insert(conn, "chats", ("id", "name", "created_at", "updated_at"), chats)
            insert(conn, "conversations", ("id", "chat_id", "role", "message", "created_at", "updated_at"), messages)
            conn.commit()
    finally:
        conn.close()
    analyze(engine)
    return time.perf_counter() - started, written_to


def bulk_sqlite(conn, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """executemany, with the values as SQLAlchemy stores them on SQLite (a uuid as 32 hex digits, a datetime as
    text with microseconds)."""

    def stored(value):
        if isinstance(value, uuid.UUID):
            return value.hex
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S.%f")
        return value

    marks = ", ".join("?" * len(columns))
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
    conn.cursor().executemany(statement, [tuple(map(stored, row)) for row in rows])


def bulk_postgres(conn, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    cursor = conn.cursor()
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def analyze(engine) -> None:
    """Statistics for the planner; on PostgreSQL a VACUUM too, as autovacuum would after a million inserts (it
    also moves the GIN index's pending entries into the index); on SQLite the WAL checkpointed."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("ANALYZE")
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            conn.exec_driver_sql("VACUUM ANALYZE")


# Measuring


def request_ms(client, method: str, path: str, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    response = client.open(path, method=method, **kwargs)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code in (200, 201), f"{method} {path}: {response.status_code} {response.get_data()}"
    return elapsed, response


QUERIES = {
    "rare word": f"/search?q={quote(RARE.lower())}",
    "two common words": f"/search?q={quote(COMMON_WORDS)}",
    "phrase": f"/search?q={quote(PHRASE)}",
    "name only (?q=)": f"/chats/?q={quote(RARE.lower())}&limit=20",
}


def measure_searches(client) -> dict[str, dict]:
    """Each query's times (ms) and hits, the queries in turn round by round."""
    results = {name: {"times": [], "hits": None} for name in QUERIES}
    for round_ in range(WARM_UP + REQUESTS):
        for name, path in QUERIES.items():
            elapsed, response = request_ms(client, "GET", path)
            if round_ >= WARM_UP:
                results[name]["times"].append(elapsed)
            results[name]["hits"] = int(response.headers["X-Total-Count"])
    return results


def measure_writes(app, client, chat_ids: list[str], text: Text) -> dict:
    """POST /conversations/create with the index, without it, with it again; and the time of re-creating it."""
    chooser = random.Random(SEED)

    def phase() -> list[float]:
        times = []
        for n in range(10 + WRITES):  # 10 of warm-up
            role = chooser.choice(("Human", "Assistant"))
            body = {"chat_id": chooser.choice(chat_ids), "role": role, "message": text.message(role)}
            elapsed, _ = request_ms(client, "POST", "/conversations/create", json=body)
            if n >= 10:
                times.append(elapsed)
        return times

    with_index = phase()
    with app.app_context(), db.engine.begin() as conn:
        search_index.drop(conn)
    without = phase()
    started = time.perf_counter()
    with app.app_context(), db.engine.begin() as conn:
        search_index.create(conn)
    recreate = time.perf_counter() - started
    with app.app_context():
        analyze(db.engine)
    again = phase()
    return {"with the index": with_index, "without it": without, "with it again": again, "recreate": recreate}


def explain(app, client, path: str) -> list[str]:
    """The plans of the statements one request sends (but the check for people), as the database reports them."""
    sent = []

    def record(_conn, _cursor, statement, parameters, _context, _executemany):
        if "FROM users" not in statement:
            sent.append((statement, parameters))

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        request_ms(client, "GET", path)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    plans = []
    with engine.connect() as conn:
        for number, (statement, parameters) in enumerate(sent, 1):
            if engine.dialect.name == "sqlite":
                rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
                lines = [row[-1] for row in rows]
            else:
                rows = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, TIMING OFF, SUMMARY OFF) {statement}", parameters)
                lines = [estimated_and_actual(row[0]) for row in rows if not row[0].strip().startswith("Buckets")]
            kind = "count" if "count(" in statement.lower() else "page" if " LIMIT " in statement.upper() else "rows"
            plans.append(f"statement {number} ({kind}): " + "; ".join(lines))
    return plans


def estimated_and_actual(line: str) -> str:
    """A line of PostgreSQL's EXPLAIN ANALYZE with the rows the planner expected and the rows there were, the
    costs left out: `Bitmap Index Scan on ix (expected 2316 rows, got 5)`."""
    line = line.strip().removeprefix("-> ").strip()
    found = re.fullmatch(r"(.*?)\s+\(cost=\S+ rows=(\d+) width=\d+\) \(actual rows=(\d+) loops=(\d+)\)", line)
    if not found:
        return line
    node, expected, actual, loops = found.groups()
    per_loop = f" in each of {loops} loops" if loops != "1" else ""
    return f"{node} (expected {expected} rows, got {actual}{per_loop})"


def measure(url: str, text: Text) -> dict:
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    seconds, chat_ids = seed(app, text)
    client = app.test_client()
    load = os.getloadavg()[0]
    searches = measure_searches(client)
    load = (load, os.getloadavg()[0])
    plans = explain(app, client, QUERIES["rare word"])
    writes = measure_writes(app, client, chat_ids, text)
    as_a_person = measure_as_a_person(app)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    return {
        "seeding": seconds,
        "load": load,
        "searches": searches,
        "as a person": as_a_person,
        "plans": plans,
        "writes": writes,
    }


def measure_as_a_person(app) -> dict[str, dict]:
    """Accounts on: the chats shared out among PEOPLE people, and the searches again as the one who has the chat
    named with the rare word (their own 1,000 chats, the others' left out by the owner index)."""
    with app.app_context():
        users = [people.create_user(f"person{n}", "a long enough password") for n in range(PEOPLE)]
        db.session.flush()
        first = users[0].id
        assert [user.id for user in users] == list(range(first, first + PEOPLE))
        spread = "rowid" if db.engine.dialect.name == "sqlite" else "abs(hashtext(CAST(id AS text)))"
        update = f"UPDATE chats SET owner_id = :first + {spread} % :people"
        db.session.execute(sa.text(update), {"first": first, "people": PEOPLE})
        holder = db.session.scalar(sa.text("SELECT owner_id FROM chats WHERE name LIKE :rare"), {"rare": f"%{RARE}"})
        _, secret = people.new_key(db.session.get(people.User, holder), "bench")
        db.session.commit()
        analyze(db.engine)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return measure_searches(client)


def main() -> str | None:
    """Prints the table; returns a warning when PostgreSQL was not measured."""
    started = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="chatapi-bench-search-")
    postgres_db = f"chatapi_bench_search_{uuid.uuid4().hex[:12]}"
    measured, reason = {}, ""
    try:
        measured["sqlite"] = measure(f"sqlite:///{folder}/search.db", Text())
        try:
            url = create_database(postgres_db)
        except psycopg.OperationalError as exc:
            url, reason = None, str(exc).strip().splitlines()[0]
        if url:
            measured["postgresql"] = measure(url, Text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if not reason:
            drop_database(postgres_db)
    report(measured)
    print(f"\nthe whole benchmark: {(time.perf_counter() - started) / 60:.0f} minutes")
    return None if "postgresql" in measured else not_measured(reason)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def report(measured: dict) -> None:
    total = CHATS * PER_CHAT
    print(f"{CHATS:,} chats, {total:,} messages, accounts off; p50 and p95 of {REQUESTS} requests in ms, and the hits")
    for backend, results in measured.items():
        print(f"{backend:10} {'seeding':18} {results['seeding']:8.0f} s")
        before, after = results["load"]
        print(f"{backend:10} {'machine load':18} {before:8.1f} {after:8.1f}    (1-minute load average: before, after)")
        for name, result in results["searches"].items():
            times = result["times"]
            p50, p95 = percentile(times, 50), percentile(times, 95)
            goal = f"  goal p95 < {RARE_GOAL_MS} ms: {verdict(p95 < RARE_GOAL_MS)}" if name == "rare word" else ""
            print(f"{backend:10} {name:18} {p50:8.1f} {p95:8.1f} ms {result['hits']:>9,} hits  {QUERIES[name]}{goal}")
        for name, result in results["as a person"].items():
            times = result["times"]
            p50, p95 = percentile(times, 50), percentile(times, 95)
            label = f"{name}, one of {PEOPLE} people"
            print(f"{backend:10} {label:37} {p50:8.1f} {p95:8.1f} ms {result['hits']:>9,} hits")
    print()
    print(f"POST /conversations/create: p50 and p95 in ms of {WRITES} writes a phase, in this order")
    for backend, results in measured.items():
        writes = results["writes"]
        for name in ("with the index", "without it", "with it again"):
            times = writes[name]
            print(f"{backend:10} {name:18} {percentile(times, 50):8.2f} {percentile(times, 95):8.2f} ms")
        with_p50 = statistics.median(writes["with the index"] + writes["with it again"])
        without_p50 = statistics.median(writes["without it"])
        ratio = with_p50 / without_p50
        goal = f"goal < {WRITE_GOAL}x: {verdict(ratio < WRITE_GOAL)}"
        print(f"{backend:10} {'cost of the index':18} {ratio:8.2f}x p50 with / without, {goal}")
        print(
            f"{backend:10} {'re-create':18} {writes['recreate']:8.0f} s (search_index.create over {total:,} messages)"
        )
    print()
    for backend, results in measured.items():
        for plan in results["plans"]:
            print(f"{backend:10} plan of the rare word's {plan}")
