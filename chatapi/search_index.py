"""The full-text index over messages and chat names, one definition for the migration that builds it, the search
that reads it (chatapi/search.py) and the schema comparison that must leave it out (it is not in the models).

SQLite: FTS5 tables with the text in the base tables (external content), kept in step by triggers. PostgreSQL: a
generated tsvector column with a GIN index. Both cut text into words of letters, marks and digits (a Devanagari,
Thai or Arabic word with its vowel signs is one word) and fold case beyond ASCII, without stemming or removing
accents, so that a query finds the same rows on both. PostgreSQL's parser would keep `config.py`, `e-mail` or
`3.14` whole, where FTS5 finds `config` in them: its text has ASCII punctuation turned into spaces first (a
translate(), which the query's phrases get too: chatapi/snippets.py). Each database cuts a query's phrases with
the same tokenizer as its text.

The FTS5 tables point at their rows by rowid. A migration that rebuilds `conversations` or `chats` on SQLite (a
batch_alter_table) renumbers rowids and drops the triggers: it must run `rebuild_sqlite()` after.
"""

import string

import sqlalchemy as sa

# table -> its searched column
SEARCHED = {"conversations": "message", "chats": "name"}
# FTS5's default word characters (L* N* Co) and marks (M*), which would otherwise cut a word at a vowel sign.
TOKENIZER = "unicode61 remove_diacritics 0 categories 'L* N* Co M*'"
ASCII_PUNCTUATION = string.punctuation
# A tsvector holds at most 1 MB: PostgreSQL indexes a text's first so many characters (CHATAPI_MAX_MESSAGE_CHARS is
# 65,536 by default; the densest text, distinct two-letter CJK words, needs under 5 bytes a character).
PG_INDEXED_CHARS = 100_000
VECTOR_COLUMN = "search_vector"  # PostgreSQL's


def fts_table(table: str) -> str:
    return f"{table}_fts"


def pg_vector_sql(column: str) -> str:
    punctuation = ASCII_PUNCTUATION.replace("'", "''")
    spaces = " " * len(ASCII_PUNCTUATION)
    text = f"translate(left({column}, {PG_INDEXED_CHARS}), '{punctuation}', '{spaces}')"
    return f"to_tsvector('simple'::regconfig, {text})"


def create(conn) -> None:
    """Build the index and fill it from the rows there are."""
    for table, column in SEARCHED.items():
        if conn.dialect.name == "sqlite":
            create_sqlite(conn, table, column)
        else:
            # Through text(), which escapes the % among the punctuation for psycopg.
            conn.execute(
                sa.text(
                    f"ALTER TABLE {table} ADD COLUMN {VECTOR_COLUMN} tsvector "
                    f"GENERATED ALWAYS AS ({pg_vector_sql(column)}) STORED"
                )
            )
            conn.exec_driver_sql(f"CREATE INDEX ix_{table}_{VECTOR_COLUMN} ON {table} USING gin ({VECTOR_COLUMN})")


def create_sqlite(conn, table: str, column: str) -> None:
    fts = fts_table(table)
    conn.exec_driver_sql(
        f"CREATE VIRTUAL TABLE {fts} USING fts5({column}, content='{table}', content_rowid='rowid', "
        f'tokenize="{TOKENIZER}")'
    )
    insert = f"INSERT INTO {fts}(rowid, {column}) VALUES (new.rowid, new.{column});"
    delete = f"INSERT INTO {fts}({fts}, rowid, {column}) VALUES ('delete', old.rowid, old.{column});"
    conn.exec_driver_sql(f"CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} BEGIN {insert} END")
    conn.exec_driver_sql(f"CREATE TRIGGER {fts}_delete AFTER DELETE ON {table} BEGIN {delete} END")
    conn.exec_driver_sql(f"CREATE TRIGGER {fts}_update AFTER UPDATE OF {column} ON {table} BEGIN {delete} {insert} END")
    conn.exec_driver_sql(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")


def rebuild_sqlite(conn) -> None:
    """After a migration rebuilt a searched table on SQLite: the triggers again, and the index from the rows."""
    drop(conn)
    create(conn)


def drop(conn) -> None:
    for table in SEARCHED:
        if conn.dialect.name == "sqlite":
            for trigger in ("insert", "delete", "update"):
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {fts_table(table)}_{trigger}")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {fts_table(table)}")
        else:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS ix_{table}_{VECTOR_COLUMN}")
            conn.exec_driver_sql(f"ALTER TABLE IF EXISTS {table} DROP COLUMN IF EXISTS {VECTOR_COLUMN}")


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """For alembic's comparison with the models: everything but the index, which only the migration describes."""
    if type_ == "table":
        return not any(name.startswith(fts_table(table)) for table in SEARCHED)
    if type_ == "column":
        return name != VECTOR_COLUMN
    if type_ == "index":
        return not name.endswith(f"_{VECTOR_COLUMN}")
    return True
