"""PostgreSQL and Redis for the tests that need them (the second test pass, see the Makefile).

`python -m tests.services check` exits 0 when both answer at TEST_DATABASE_URL / TEST_REDIS_URL.
"""

import os
import sys
import uuid
from contextlib import contextmanager

import psycopg
import redis

POSTGRES_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/chat")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def unreachable() -> str:
    """'' when PostgreSQL and Redis both answer, else what is missing."""
    problems = []
    try:
        with psycopg.connect(_with_database(POSTGRES_URL, "postgres"), connect_timeout=3):
            pass
    except psycopg.Error as exc:
        problems.append(f"PostgreSQL at {POSTGRES_URL}: {str(exc).strip().splitlines()[0]}")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        problems.append(f"Redis at {REDIS_URL}: {exc}")
    return "; ".join(problems)


def _with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


@contextmanager
def fresh_postgres_database():
    """A new, empty PostgreSQL database for server processes of one test; dropped afterwards."""
    name = f"chat_live_{uuid.uuid4().hex[:12]}"
    admin_url = _with_database(os.environ.get("DATABASE_URL", POSTGRES_URL), "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__" and sys.argv[1:] == ["check"]:
    problem = unreachable()
    if problem:
        print(f"Not reachable: {problem}")
    sys.exit(1 if problem else 0)
