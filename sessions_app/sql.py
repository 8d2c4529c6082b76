"""Helpers for the statements every chat turn runs, and every batch the sender delivers,
written as SQL.

Django's ORM takes 150-350 µs of CPU to build a query, more than SQLite or PostgreSQL take to
run these; a turn runs a handful of them, so on the hot path that building was most of a
turn's cost (and, with the sender inside a server, of a delivery's). The SQL is the same on
both databases (RETURNING needs SQLite 3.35, which chatproject.sqlite requires). Everything
off those paths uses the ORM.
"""

import operator
import re
from collections.abc import Callable, Sequence
from functools import cache, lru_cache
from typing import TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model
from django.utils.asyncio import async_unsafe

M = TypeVar("M", bound=Model)
R = TypeVar("R")


def db() -> BaseDatabaseWrapper:
    """This thread's connection. `django.db.connection` looks it up again on every attribute
    (about 4 µs each, asgiref's thread-or-task local); a hot path looks it up once."""
    return connections[DEFAULT_DB_ALIAS]


def fetch_one(sql: str, params: Sequence) -> tuple | None:
    return _run(sql, params, operator.methodcaller("fetchone"))


def execute(sql: str, params: Sequence) -> int:
    """Run a statement; the number of rows it changed."""
    return _run(sql, params, operator.attrgetter("rowcount"))


def fetch_all(sql: str, params: Sequence) -> list[tuple]:
    return _run(sql, params, operator.methodcaller("fetchall"))


@async_unsafe
def _run(sql: str, params: Sequence, result: Callable[[object], R]) -> R:
    """Run one statement (`%s` placeholders) and return `result(cursor)`.

    On the driver's own cursor, not Django's wrapper: making and closing a Django cursor, its
    execute's layers and SQLite's placeholder rewrite (a regular expression per call) cost
    about 100k instructions a statement against 25k for the driver; that was half of the
    flag's cost per turn (see bench/README.md). What the wrapper does that matters is kept:
    the connection is opened on first use and health-checked as Django does, a broken
    transaction is refused, errors come out as django.db's exceptions, and a call from an
    event loop is refused. Where Django records or intercepts queries (DEBUG,
    CaptureQueriesContext, execute_wrapper) the statement goes through Django's cursor, so it
    is seen like any other.
    """
    conn = db()
    if conn.queries_logged or conn.execute_wrappers:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return result(cursor)
    conn.close_if_health_check_failed()
    if conn.connection is None:
        conn.ensure_connection()
    conn.validate_no_broken_transaction()
    with conn.wrap_database_errors:
        if conn.vendor == "sqlite":
            cursor = conn.connection.cursor()
            sql = _qmark(sql)
        else:
            cursor = conn.create_cursor()
        try:
            cursor.execute(sql, params)
            return result(cursor)
        finally:
            try:
                cursor.close()
            except conn.Database.Error:
                pass  # as Django's cursor: the statement's own outcome stands


_FORMAT = re.compile(r"(?<!%)%s")


@lru_cache(maxsize=512)
def _qmark(sql: str) -> str:
    """The statement with SQLite's placeholders, as Django's SQLite cursor rewrites it."""
    return _FORMAT.sub("?", sql).replace("%%", "%")


@cache
def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


@cache
def column(model: type[Model], attname: str) -> str:
    """The quoted column of a field, by attname (`session_id` for the `session` foreign key)."""
    (field,) = [f for f in model._meta.concrete_fields if f.attname == attname]
    return connection.ops.quote_name(field.column)


def columns(model: type[Model], attnames: Sequence[str]) -> str:
    return ", ".join(column(model, name) for name in attnames)


def instance(model: type[M], values: dict) -> M:
    """A model instance loaded from `values` (attname -> value); other fields load on access.
    No database converters run: give Python values (ints, strings, None), or convert first."""
    fields = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(DEFAULT_DB_ALIAS, fields, [values[name] for name in fields])
