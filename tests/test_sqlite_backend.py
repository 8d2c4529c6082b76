"""chatproject.sqlite: a transaction holds the process's writer lock from BEGIN to its end,
however it ends, and a writer of another thread waits on it rather than in SQLite."""

import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def writer():
    if connection.vendor != "sqlite":
        pytest.skip("the writer lock is the SQLite backend's")
    from chatproject.sqlite.base import _writer

    assert not _writer.locked()
    return _writer


def test_the_lock_is_held_inside_a_transaction_and_released_after_commit(writer):
    with transaction.atomic():
        get_user_model().objects.create(username="a")
        assert writer.locked()
    assert not writer.locked()


def test_the_lock_is_released_after_a_rollback(writer):
    User = get_user_model()
    User.objects.create(username="a")
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create(username="b")
        User.objects.create(username="a")
    assert not writer.locked()
    assert list(User.objects.values_list("username", flat=True)) == ["a"]


def test_a_writer_of_another_thread_waits_on_the_lock_not_in_sqlite(writer):
    User = get_user_model()
    inside, events, sent = threading.Event(), [], []

    def record(execute, sql, params, many, context):
        sent.append(sql)
        return execute(sql, params, many, context)

    def other_writer():
        inside.wait(5)
        with connection.execute_wrapper(record), transaction.atomic():
            events.append("other began")
            User.objects.create(username="other")
        connection.close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    with transaction.atomic():
        User.objects.create(username="first")
        inside.set()
        thread.join(timeout=0.3)  # it cannot begin while this transaction holds the lock
        assert thread.is_alive()
        # Queued on the lock: it has not even sent BEGIN to SQLite (whose busy handler would
        # have it sleep and poll).
        assert sent == []
        events.append("first committing")
    thread.join(timeout=10)
    assert events == ["first committing", "other began"]
    assert sent[0].startswith("BEGIN IMMEDIATE")
    assert User.objects.count() == 2
    assert not writer.locked()
