"""Support shared by the tests and the benchmarks, imported as tests.support.X everywhere (tests import nothing
from each other or from a conftest): the live server, an SSE client, the chats the tests make (live: chats.py;
in process: client.py), the test databases, the page tests' helpers, and the local web that stands in for the
internet."""

import time


def wait_for(condition, seconds: float = 300, what: str = "the condition") -> None:
    """Until condition() holds; the deadline only keeps a broken server from hanging the suite."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
