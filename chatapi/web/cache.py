"""A small time-limited, size-bounded cache, so that asking twice does not search and fetch twice."""

import time
from collections import OrderedDict
from typing import Any


class TTLCache:
    def __init__(self, seconds: float, size: int):
        self.seconds = seconds
        self.size = size
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key):
        """The value stored for key, or None when absent or expired."""
        item = self._items.get(key)
        if item is None:
            return None
        stored, value = item
        if time.monotonic() - stored > self.seconds:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        self._items[key] = (time.monotonic(), value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
