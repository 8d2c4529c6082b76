"""The statements every chat turn runs, written as SQL.

Django's ORM takes 150-350 µs of CPU to build a query, more than SQLite or PostgreSQL take to
run these; a turn runs a handful of them, so on the hot path that building was most of a
turn's cost. The SQL below is the same on both databases (RETURNING and ON CONFLICT need
SQLite 3.35). Everything off the hot path uses the ORM.
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
    """A model instance loaded from `values` (attname -> value); other fields load on access."""
    fields = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(connection.alias, fields, [values[name] for name in fields])


def upsert(
    model: type[Model], objs: Sequence[Model], *, unique: Sequence[str], update: Sequence[str]
) -> None:
    """Insert `objs` (their defaults filled in as `save` would); a row that already has their
    `unique` attnames gets the `update` ones instead."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for obj in objs for f in fields]
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    assignments = ", ".join(
        f"{column(model, name)} = excluded.{column(model, name)}" for name in update
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table(model)} ({columns(model, [f.attname for f in fields])}) "
            f"VALUES {', '.join([row] * len(objs))} "
            f"ON CONFLICT ({columns(model, unique)}) DO UPDATE SET {assignments}",
            params,
        )
