"""Replies shared by several processes through Redis (CHATAPI_REDIS_URL): a reply made in one process can be
joined, resumed and stopped through any other, and a chat has one reply at a time across all of them. Only core
commands (streams, keys, pub/sub, and redis-py's Lock, whose scripts are plain EVAL).

Keys, each under CHATAPI_REDIS_PREFIX:
- `chat:<chat id>:lock`: held while a reply is made for the chat (prepared, queued or generated); its value is the
  reply's message id. A lease of CHATAPI_REDIS_LEASE_SECONDS that the process making the reply renews, so that a
  process that dies lets go of the chat within one lease.
- `chat:<chat id>:reply`: a hash of the chat's latest reply: message_id, answering, replacing.
- `reply:<message id>:events`: a stream of the reply's events. Event n, whose SSE id is `<message id>.<n>`, is
  entry `0-<n+1>`: a Last-Event-ID names the entry to XREAD after, and an entry can only be added after the last
  (a process that finds the reply's maker dead adds its `error` event in the same place as the maker's next one,
  and only one of them succeeds). Fields: `event` (empty for a text piece) and `data` (JSON).
- `reply:<message id>:heard`: set for a grace period by each process streaming the reply to a client: the maker
  does not stop a reply that is listened to elsewhere.
- `reply:<message id>:stop`: a stop was asked (the maker also hears of it at once on the channel `stops`).
When a reply is over its keys expire after CHATAPI_REDIS_TTL_SECONDS.
"""

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable

import gevent
import redis
from gevent.event import Event
from gevent.lock import Semaphore
from redis.exceptions import LockError

from .reply import Reply, Resumable
from .sse import PING, serialized_event_text

log = logging.getLogger(__name__)
ENDINGS = ("done", "error")  # the events after which a reply's stream has nothing more
ORPHANED = {
    "code": 502,
    "message": "the server process making this reply stopped before it finished, and its request to the model "
    "ended with it: nothing was saved; ask again",
}
STOPS_POLL_SECONDS = 5  # how long the stop listener waits for a message before looking again


def entry_id(index: int) -> str:
    """The stream entry of event `index` (see the module's docstring)."""
    return f"0-{index + 1}"


def index_of_entry(entry: str) -> int:
    return int(entry.split("-")[1]) - 1


def uuid_or_none(text: str | None) -> uuid.UUID | None:
    return uuid.UUID(text) if text else None


class Board:
    """This process's view of the replies in Redis: it claims chats for the replies made here and publishes their
    events (Publication), finds replies made elsewhere (SharedReply), and carries stop requests both ways, and the
    news of a deleted chat to every process (each deletes what it keeps of the chat: its saved KV state)."""

    def __init__(self, url: str, prefix: str, lease: float, ttl: int, grace: float, ping: float):
        self.prefix = prefix
        self.lease = lease
        self.ttl = ttl
        self.grace = grace
        self.ping = ping
        # A listener's XREAD blocks at most this long, then looks whether the reply's maker is still there.
        self.block_seconds = min(ping, grace / 2, lease / 3)
        # protocol=2: streams came in Redis 5, RESP3 in 6; redis-py 8 gives both the same types.
        self.redis = redis.Redis.from_url(
            url,
            protocol=2,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=self.block_seconds + 10,
            health_check_interval=30,
        )
        self.owned: dict[str, Reply] = {}  # message id -> the replies this process makes
        self.on_stop: Callable[[Reply], None] = lambda reply: None  # the service's cancel
        self.on_deleted: Callable[[uuid.UUID], None] = lambda chat_id: None  # the backend's forget_chat
        self._stops: gevent.Greenlet | None = None

    # Keys

    def lock_key(self, chat_id) -> str:
        return f"{self.prefix}chat:{chat_id}:lock"

    def record_key(self, chat_id) -> str:
        return f"{self.prefix}chat:{chat_id}:reply"

    def stream_key(self, message_id) -> str:
        return f"{self.prefix}reply:{message_id}:events"

    def heard_key(self, message_id) -> str:
        return f"{self.prefix}reply:{message_id}:heard"

    def stop_key(self, message_id) -> str:
        return f"{self.prefix}reply:{message_id}:stop"

    @property
    def stops_channel(self) -> str:
        return f"{self.prefix}stops"

    @property
    def deletions_channel(self) -> str:
        return f"{self.prefix}deleted"

    # Health

    def problem(self) -> str | None:
        """Why Redis cannot be used right now, else None."""
        try:
            self.redis.ping()
            return None
        except redis.RedisError as exc:
            return f"Redis is unreachable: {exc}"

    # The chat's reply

    def holder(self, chat_id) -> str | None:
        """The message id of the reply being made for the chat, in whichever process, else None."""
        return self.redis.get(self.lock_key(chat_id))

    def current(self, chat_id, local: Reply | None) -> Resumable | None:
        """The chat's latest reply while it is remembered: `local` (the one this process made) when it is that one,
        else a view of the stream another process writes or wrote."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.record_key(chat_id))
        pipe.get(self.lock_key(chat_id))
        record, holder = pipe.execute()
        return self._resumable(chat_id, record, holder, local) if record else None

    def view(self, chat_id, message_id: str, local: Reply | None) -> Resumable:
        """The reply `message_id` that holds the chat's lock (one that another request started meanwhile)."""
        return self._resumable(chat_id, {"message_id": message_id}, message_id, local)

    def _resumable(self, chat_id, record: dict, holder: str | None, local: Reply | None) -> Resumable:
        """`local` when it is the reply the record names, else a view of that reply's stream."""
        if local is not None and str(local.message_id) == record["message_id"]:
            return local
        return SharedReply(self, chat_id, record, holder)

    def claim(self, reply: Reply) -> str | None:
        """Take the chat's lock for `reply` and publish it from now on: None; or, when another reply holds the
        chat, its message id."""
        lock = self.redis.lock(self.lock_key(reply.chat_id), timeout=self.lease, blocking=False, thread_local=False)
        token = str(reply.message_id)
        while not lock.acquire(token=token):
            holder = self.holder(reply.chat_id)
            if holder is not None:
                return holder
            # It was let go between the two: try again.
        record = {
            "message_id": token,
            "answering": str(reply.answering or ""),
            "replacing": str(reply.replacing or ""),
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.record_key(reply.chat_id), mapping=record)
        pipe.expire(self.record_key(reply.chat_id), self.ttl)
        pipe.execute()
        self.owned[token] = reply
        self._listen_for_stops()
        Publication(self, reply, lock)
        return None

    def request_stop(self, chat_id) -> bool:
        """Ask the process making the chat's reply to stop it; whether one is being made."""
        holder = self.holder(chat_id)
        if holder is None:
            return False
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.stop_key(holder), "1", ex=self.ttl)
        pipe.publish(self.stops_channel, holder)
        pipe.execute()
        return True

    def announce_deleted(self, chat_id) -> None:
        """Tell every process (this one too) that the chat was deleted."""
        try:
            self.redis.publish(self.deletions_channel, str(chat_id))
        except redis.RedisError as exc:  # the other processes keep its state until their budget pushes it out
            log.warning("Redis: could not tell the other processes that chat %s was deleted: %s", chat_id, exc)

    def forget(self, chat_id) -> None:
        """Forget the chat's finished reply (its messages were deleted)."""
        if self.holder(chat_id) is None:
            self.redis.delete(self.record_key(chat_id))

    def heard_for(self, message_id) -> float:
        """Seconds for which a listener in another process still counts as listening to the reply (0: none)."""
        try:
            milliseconds = self.redis.pttl(self.heard_key(message_id))
        except redis.RedisError as exc:
            log.warning("Redis: could not ask whether reply %s is listened to elsewhere: %s", message_id, exc)
            return 0
        return milliseconds / 1000 if milliseconds > 0 else 0

    def end_orphaned(self, message_id: str, next_index: int) -> None:
        """End a reply whose maker is gone with an `error` event, unless an event already took that place."""
        stream = self.stream_key(message_id)
        data = json.dumps(ORPHANED)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(stream, {"event": "error", "data": data}, id=entry_id(next_index))
            pipe.expire(stream, self.ttl + 60)
            pipe.execute()
            log.warning("reply %s: its maker is gone; ended with an error event", message_id)
        except redis.ResponseError:
            pass  # the maker (still there after all) or another process added that event first

    # Stop requests for the replies made here, and deleted chats

    def listen(self) -> None:
        """Listen for stop requests and deleted chats from now on (the service calls this as its worker starts)."""
        self._listen_for_stops()

    def _listen_for_stops(self) -> None:
        if self._stops is None or self._stops.dead:
            self._stops = gevent.spawn(self._hear_stops)

    def _hear_stops(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.stops_channel, self.deletions_channel)
                while True:
                    message = pubsub.get_message(timeout=STOPS_POLL_SECONDS)
                    if message and message["channel"] == self.deletions_channel:
                        with contextlib.suppress(ValueError):  # not a chat id: nothing of ours
                            self.on_deleted(uuid.UUID(message["data"]))
                    elif message and message["data"] in self.owned:
                        self.on_stop(self.owned[message["data"]])
            except redis.RedisError as exc:
                log.warning("Redis: listening for stop requests failed, trying again: %s", exc)
                gevent.sleep(1)
            finally:
                pubsub.close()


class Publication:
    """A reply made in this process, published: one greenlet writes its events to its stream in order (in one
    round trip for all that came since the last write), renews the chat's lease every third of it, and looks for
    a stop request kept as a key (in case the channel's message was missed). When the reply is over, its keys get
    their TTL and the chat is let go."""

    def __init__(self, board: Board, reply: Reply, lock):
        self.board = board
        self.reply = reply
        self.records = reply.records  # its own hold on them: a finished reply kept for reconnects lets go of its own
        self.lock = lock
        self.stream = board.stream_key(reply.message_id)
        self.written = 0
        self.closed = False
        self._wake = Event()
        self._writing = Semaphore()  # one write at a time, in order: the loop's or finish's
        reply.on_publish = self._wake.set
        reply.on_finish = self.finish
        reply.heard_elsewhere = lambda: board.heard_for(reply.message_id)
        gevent.spawn(self._run)

    def _run(self) -> None:
        board, reply = self.board, self.reply
        renew_every = board.lease / 3
        renewed = time.monotonic()
        failing_since = None
        while True:
            self._wake.wait(timeout=renew_every)
            self._wake.clear()
            try:
                with self._writing:
                    if self.closed:
                        return
                    self._write()
                    if time.monotonic() - renewed >= renew_every:
                        self._renew()
                        renewed = time.monotonic()
                failing_since = None
            except (LockError, redis.ResponseError) as exc:
                # The lease ran out (this process stalled for a whole lease) and another process ended the reply
                # or took the chat: stop making it.
                log.error("reply %s: lost its chat's lease (%s); stopping it", reply.message_id, exc)
                board.on_stop(reply)
                return self._detach()
            except redis.RedisError as exc:
                failing_since = failing_since or time.monotonic()
                log.warning("Redis: reply %s could not be published, trying again: %s", reply.message_id, exc)
                if time.monotonic() - failing_since > board.lease:
                    log.error("reply %s: Redis unreachable for a whole lease; no longer published", reply.message_id)
                    return self._detach()
                gevent.sleep(min(1, renew_every))
                continue
            if reply.finished and self.written == len(self.records):
                with self._writing:
                    return self._close()

    def finish(self) -> None:
        """The reply's last event is published: write what is left and let go of the chat now (in the caller's
        greenlet), before the listeners in this process hear of the end. Should Redis fail, the loop tries again."""
        with self._writing:
            if self.closed:
                return
            try:
                self._write()
            except redis.RedisError as exc:
                log.warning("Redis: reply %s's end could not be written yet: %s", self.reply.message_id, exc)
                return
            self._close()

    def _write(self) -> None:
        records = self.records
        end = len(records)
        if self.written == end:
            return
        pipe = self.board.redis.pipeline(transaction=False)
        for index in range(self.written, end):
            event, data = records[index]
            fields = {"event": event or "", "data": json.dumps(data, ensure_ascii=False)}
            pipe.xadd(self.stream, fields, id=entry_id(index))
        if self.written == 0:
            pipe.expire(self.stream, self.board.ttl + 60)
        pipe.execute()
        self.written = end

    def _renew(self) -> None:
        board, reply = self.board, self.reply
        try:
            self.lock.reacquire()
        except LockError:
            # Expired but not yet taken by another (nothing ended the reply either, or the write would have
            # failed): take it again.
            if not self.lock.acquire(token=str(reply.message_id)):
                raise
            log.warning("reply %s: its chat's lease had run out; taken again", reply.message_id)
        pipe = board.redis.pipeline(transaction=False)
        pipe.expire(self.stream, board.ttl + 60)
        pipe.expire(board.record_key(reply.chat_id), board.ttl)
        pipe.exists(board.stop_key(reply.message_id))
        if pipe.execute()[-1] and not reply.cancelled:
            gevent.spawn(board.on_stop, reply)  # not under the write lock: stopping a queued reply finishes it

    def _close(self) -> None:
        if self.closed:
            return
        board, reply = self.board, self.reply
        pipe = board.redis.pipeline(transaction=False)
        pipe.expire(self.stream, board.ttl + 60)  # outlives the record, which points at it
        pipe.expire(board.record_key(reply.chat_id), board.ttl)
        pipe.delete(board.heard_key(reply.message_id), board.stop_key(reply.message_id))
        try:
            pipe.execute()
            self.lock.release()
        except LockError:
            pass  # the lease ran out as the reply ended: nothing to let go
        except redis.RedisError as exc:
            log.warning("Redis: reply %s's end was not recorded: %s", reply.message_id, exc)
        self._detach()

    def _detach(self) -> None:
        self.closed = True
        self.board.owned.pop(str(self.reply.message_id), None)
        self.reply.on_publish = self.reply.on_finish = None


class SharedReply(Resumable):
    """A chat's reply as its stream in Redis shows it, made by another process (or once made by this one and
    forgotten). A reply whose maker let go of the chat without ending it (the process died) is ended here with an
    `error` event."""

    def __init__(self, board: Board, chat_id, record: dict, holder: str | None):
        self.board = board
        self.chat_id = chat_id
        self.message_id = uuid.UUID(record["message_id"])
        self.answering = uuid_or_none(record.get("answering"))
        self.replacing = uuid_or_none(record.get("replacing"))
        self.stream = board.stream_key(self.message_id)
        self.count, self.finished = self._last()
        if not self.finished and holder != record["message_id"]:
            board.end_orphaned(record["message_id"], self.count)
            self.count, self.finished = self._last()

    def _last(self) -> tuple[int, bool]:
        """The number of events in the stream, and whether the last one ends it."""
        last = self.board.redis.xrevrange(self.stream, count=1)
        if not last:
            return 0, False
        entry, fields = last[0]
        return index_of_entry(entry) + 1, fields["event"] in ENDINGS

    @property
    def event_count(self) -> int:
        return self.count

    def listen(self, after: int = -1):
        """The events after index `after`, then each new one as the maker adds it, with pings between. While it
        streams, it tells the maker that someone listens; when the maker lets go of the chat without ending the
        reply, it ends it."""
        board = self.board
        message_id = str(self.message_id)
        seen = after
        block = max(1, int(board.block_seconds * 1000))
        grace = max(1, int(board.grace * 1000))
        try:
            yield from self._follow(seen, block, grace)
        except redis.RedisError as exc:
            # End the response: the client reconnects with its Last-Event-ID, and picks up once Redis answers.
            log.warning("Redis: streaming reply %s failed: %s", message_id, exc)

    def _follow(self, seen: int, block: int, grace: int):
        board = self.board
        message_id = str(self.message_id)
        quiet_since = time.monotonic()
        while True:
            pipe = board.redis.pipeline(transaction=False)
            pipe.set(board.heard_key(message_id), "1", px=grace)
            pipe.xread({self.stream: entry_id(seen)}, block=block)
            found = pipe.execute()[1]
            entries = found[0][1] if found else []
            for entry, fields in entries:
                seen = index_of_entry(entry)
                yield serialized_event_text(f"{message_id}.{seen}", fields["data"], fields["event"] or None)
                if fields["event"] in ENDINGS:
                    return
            if entries:
                quiet_since = time.monotonic()
                continue
            if board.holder(self.chat_id) != message_id:
                board.end_orphaned(message_id, seen + 1)  # read next time round, whoever ended it
            if time.monotonic() - quiet_since >= board.ping:
                yield PING
                quiet_since = time.monotonic()
