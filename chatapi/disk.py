"""Whether the database's disk is full: /health reports it, and a write that fails for it says so.

SELECT 1 still answers on a full disk while every write fails, so two signs are watched:
- a SQLite file's filesystem with less free space than SQLite may need for its next commits (LOW_SPACE_BYTES);
- a write that failed for want of space (SQLITE_FULL; PostgreSQL's SQLSTATE 53100 disk_full): the only sign a
  PostgreSQL client has. It counts until a later write is committed, or for REMEMBERED_SECONDS at most, so that
  a server nobody writes to (a load balancer took it out) is tried again.
"""

import os
import time

from sqlalchemy import Engine, event

SQLITE_FULL = 13
DISK_FULL_SQLSTATE = "53100"
# SQLite's write-ahead log grows to about 4 MB (1,000 pages, its checkpoint point) before it is reused: with less
# free space than that, the next commit may be the one that fails.
LOW_SPACE_BYTES = 4 * 1024 * 1024
REMEMBERED_SECONDS = 60
WROTE = "chatapi_wrote"  # set in a connection's info by a write of its current transaction


def is_disk_full(error: BaseException | None) -> bool:
    """Whether a database error (SQLAlchemy's, or the driver's inside it) is one of a full disk."""
    original = getattr(error, "orig", None) or error
    return (
        getattr(original, "sqlite_errorcode", None) == SQLITE_FULL
        or getattr(original, "sqlstate", None) == DISK_FULL_SQLSTATE
    )


class DiskWatch:
    """Watches one engine for the two signs."""

    def __init__(self, engine: Engine):
        self.failed_at: float | None = None  # when a write last failed for a full disk
        self.directory = None  # a SQLite file's directory, whose filesystem's free space is read
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            self.directory = os.path.dirname(os.path.abspath(engine.url.database))
        event.listen(engine, "handle_error", self.on_error)
        event.listen(engine, "after_cursor_execute", self.on_execute)
        event.listen(engine, "commit", self.on_commit)
        event.listen(engine, "rollback", self.on_rollback)

    def problem(self) -> str | None:
        """Why the database's disk counts as full, or None."""
        if self.directory is not None:
            stats = os.statvfs(self.directory)
            free = stats.f_bavail * stats.f_frsize
            if free < LOW_SPACE_BYTES:
                return f"the disk of {self.directory} has {free // 1024} KB free"
        if self.failed_at is not None and time.monotonic() - self.failed_at < REMEMBERED_SECONDS:
            return f"a write failed for a full disk {time.monotonic() - self.failed_at:.0f} s ago"
        return None

    def on_error(self, context) -> None:
        if is_disk_full(context.original_exception):
            self.failed_at = time.monotonic()

    def on_execute(self, connection, cursor, statement, parameters, context, executemany) -> None:
        if context is not None and (context.isinsert or context.isupdate or context.isdelete):
            connection.info[WROTE] = True

    def on_commit(self, connection) -> None:
        """Before the commit is sent: a commit that fails calls on_error after this."""
        if connection.info.pop(WROTE, False):
            self.failed_at = None

    def on_rollback(self, connection) -> None:
        connection.info.pop(WROTE, None)
