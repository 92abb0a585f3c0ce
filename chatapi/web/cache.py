"""A small time-limited cache bounded by count and by bytes, so that asking twice does not search and fetch twice."""

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class TTLCache:
    """Entries live `seconds` after they are stored; beyond `size` entries or `max_bytes` (each entry's bytes as
    `sizeof` measures them) the oldest go first. Every get and put drops the expired ones: the entries are kept in
    the order they were stored, so the expired are always at the front."""

    def __init__(self, seconds: float, size: int, max_bytes: int, sizeof: Callable[[Any], int]):
        self.seconds = seconds
        self.size = size
        self.max_bytes = max_bytes
        self.sizeof = sizeof
        self.bytes = 0
        self._items: OrderedDict[Any, tuple[float, Any, int]] = OrderedDict()  # key -> (stored, value, bytes)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key):
        """The value stored for key, or None when absent or expired."""
        self._drop_expired()
        item = self._items.get(key)
        return None if item is None else item[1]

    def put(self, key, value) -> None:
        """Store value for key (in place of what was there); a value larger than max_bytes alone is not kept."""
        self._drop_expired()
        self._remove(key)
        size = self.sizeof(value)
        if size > self.max_bytes:
            return
        self._items[key] = (time.monotonic(), value, size)
        self.bytes += size
        while len(self._items) > self.size or self.bytes > self.max_bytes:
            self._remove(next(iter(self._items)))

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def _drop_expired(self) -> None:
        oldest_kept = time.monotonic() - self.seconds
        while self._items and next(iter(self._items.values()))[0] < oldest_kept:
            self._remove(next(iter(self._items)))

    def _remove(self, key) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.bytes -= item[2]
