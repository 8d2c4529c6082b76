"""The hot path's statements (sessions_app.sql) run on the database driver's own cursor, not
Django's wrapper; what the wrapper does that callers rely on must still hold. On SQLite, and on
PostgreSQL in the second pass."""

import asyncio
import threading

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import SynchronousOnlyOperation
from django.db import IntegrityError, connection, transaction
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sessions_app import sql
from sessions_app.models import ChatMessage, ChatSession

pytestmark = pytest.mark.django_db


def insert_message(session: ChatSession, seq: int) -> int:
    columns = ["session_id", "seq", "role", "content", "agent_id", "created_at"]
    (pk,) = sql.fetch_one(
        f"INSERT INTO {sql.table(ChatMessage)} ({sql.columns(ChatMessage, columns)}) "
        f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {sql.column(ChatMessage, 'id')}",
        [
            session.pk,
            seq,
            "user",
            "hello",
            "echo",
            connection.ops.adapt_datetimefield_value(timezone.now()),
        ],
    )
    return pk


@pytest.fixture
def session():
    owner = get_user_model().objects.create_user("sql-owner")
    return ChatSession.objects.create(owner=owner, agent_id="echo", project_id="p", session_id="s")


def test_statements_return_rows_row_counts_and_returning_values(session):
    pk = insert_message(session, 1)
    insert_message(session, 2)
    assert ChatMessage.objects.get(pk=pk).content == "hello"

    seq = sql.column(ChatMessage, "seq")
    rows = sql.fetch_all(
        f"SELECT {seq} FROM {sql.table(ChatMessage)} "
        f"WHERE {sql.column(ChatMessage, 'session_id')} = %s ORDER BY {seq}",
        [session.pk],
    )
    assert rows == [(1,), (2,)]
    changed = sql.execute(
        f"UPDATE {sql.table(ChatMessage)} SET {sql.column(ChatMessage, 'content')} = %s "
        f"WHERE {sql.column(ChatMessage, 'session_id')} = %s",
        ["changed", session.pk],
    )
    assert changed == 2
    assert sql.fetch_one(f"SELECT 1 FROM {sql.table(ChatMessage)} WHERE 1 = 0", []) is None


def test_percent_signs_are_django_placeholders_and_escapes():
    assert sql.fetch_one("SELECT %s, '100%%'", ["a%s"]) == ("a%s", "100%")


def test_database_errors_are_djangos_exceptions(session):
    insert_message(session, 1)
    with pytest.raises(IntegrityError), transaction.atomic():
        insert_message(session, 1)  # (session, seq) is unique


def test_a_broken_transaction_refuses_statements():
    with transaction.atomic():
        transaction.set_rollback(True)
        with pytest.raises(TransactionManagementError):
            sql.fetch_one("SELECT 1", [])


@pytest.mark.django_db(transaction=True)
def test_a_closed_connection_is_opened_again():
    connection.close()
    assert connection.connection is None
    assert sql.fetch_one("SELECT 1", []) == (1,)


def test_each_thread_uses_its_own_connection():
    # A thread's statement runs on that thread's connection, as with django.db.connection.
    seen = {}

    def run():
        try:
            seen["row"] = sql.fetch_one("SELECT 2", [])
            seen["connection"] = sql.db()
        finally:
            sql.db().close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen["row"] == (2,)
    assert seen["connection"] is not sql.db()


def test_djangos_query_log_sees_the_statements(session):
    with CaptureQueriesContext(connection) as queries:
        insert_message(session, 1)
        sql.fetch_all("SELECT %s", [7])
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["INSERT", "SELECT"]
    assert "7" in queries.captured_queries[1]["sql"]


def test_execute_wrappers_see_the_statements():
    seen = []

    def wrapper(execute, statement, params, many, context):
        seen.append(statement)
        return execute(statement, params, many, context)

    with connection.execute_wrapper(wrapper):
        assert sql.fetch_one("SELECT %s", [3]) == (3,)
    assert seen == ["SELECT %s"]


def test_a_call_from_an_event_loop_is_refused():
    async def from_the_loop():
        return sql.fetch_one("SELECT 1", [])

    with pytest.raises(SynchronousOnlyOperation):
        asyncio.run(from_the_loop())
