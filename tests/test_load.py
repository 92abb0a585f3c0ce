"""Load: 50 clients for 30 s (bench/load.py, locust headless) creating chats, adding messages, listing and reading
them while replies stream: no 5xx, no request left unanswered, every acknowledged write a row, and on SQLite
no "database is locked"."""

from bench import load


def test_fifty_clients_for_thirty_seconds(start_server, database_url, backend):
    server = start_server(**load.SERVER_SETTINGS)
    outcome = load.run(server, database_url)
    load.report(backend, outcome)  # shown with -s, and with a failure

    assert outcome.lost == []
    assert outcome.server_failures == 0, outcome.server_errors
    assert set(outcome.statuses) <= {200, 201}, outcome.statuses
    assert outcome.locked == 0
    # The load was real: every kind of request ran, many times, and replies streamed all along.
    assert len(outcome.api_times) >= 300, outcome.statuses
    assert all(len(times) >= 10 for name, times in outcome.times.items() if not name.startswith("stream:"))
    assert len(outcome.times) == 6 + 2, list(outcome.times)  # the six kinds of API request, and the streams
    assert len(outcome.replies) >= load.STREAMS
    assert outcome.written >= 100
