"""A test run's own room on the machine's shared services: PostgreSQL databases it creates and drops, and a Redis
key prefix whose keys it deletes. Shared by tests/conftest.py, the Redis and deployment tests, and bench/."""

import os

import psycopg
import redis

POSTGRES_ADMIN_URL = os.environ.get("CHATAPI_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CHATAPI_TEST_REDIS", "redis://127.0.0.1:6379/0")


def postgres_admin(statement: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(statement)


def create_database(name: str) -> str:
    """Create a database on the admin URL's server: its SQLAlchemy URL (psycopg.OperationalError when the server
    cannot be reached)."""
    postgres_admin(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def drop_database(name: str) -> None:
    postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def forget_keys(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every Redis key under the prefix."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
