"""Helpers for the statements every chat turn runs, and every batch the sender delivers,
written as SQL.

Django's ORM takes 150-350 µs of CPU to build a query, more than SQLite or PostgreSQL take to
run these; a turn runs a handful of them, so on the hot path that building was most of a
turn's cost (and, with the sender inside a server, of a delivery's). The SQL is the same on
both databases (RETURNING needs SQLite 3.35, which chatproject.sqlite requires). Everything
off those paths uses the ORM.
"""

from collections.abc import Sequence
from functools import cache
from typing import TypeVar

from django.db import connection
from django.db.models import Model

M = TypeVar("M", bound=Model)


def fetch_one(sql: str, params: Sequence) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def execute(sql: str, params: Sequence) -> int:
    """Run a statement; the number of rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def fetch_all(sql: str, params: Sequence) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


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
    return model.from_db(connection.alias, fields, [values[name] for name in fields])
