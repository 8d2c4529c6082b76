"""Every lookup by a foreign key whose own index was dropped (migration 0003) still finds an
index: the unique constraint that leads with the column. Checked with the database's own query
plan, on SQLite and (in the second pass) on PostgreSQL, where sequential scans are turned off so
that the planner shows whether an index could serve the query at all on these tiny tables."""

import pytest
from django.db import connection

from sessions_app.models import ChatMessage, ChatSession, SinkReceipt, SinkState

pytestmark = pytest.mark.django_db


def plan(queryset) -> str:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            return queryset.explain()
    return queryset.explain()


def uses_an_index(text: str) -> bool:
    if connection.vendor == "postgresql":
        # The condition searches the index (not a whole-index scan with a filter).
        return "Index Cond" in text
    # SQLite: "SEARCH <table> USING [COVERING] INDEX ..." rather than "SCAN <table>".
    return "USING" in text and "INDEX" in text and "SCAN" not in text


@pytest.mark.parametrize(
    "queryset",
    [
        pytest.param(lambda: ChatMessage.objects.filter(session_id=1), id="messages-of-a-session"),
        pytest.param(lambda: ChatSession.objects.filter(owner_id=1), id="sessions-of-a-user"),
        pytest.param(lambda: SinkState.objects.filter(session_id=1), id="sink-states-of-a-session"),
        pytest.param(lambda: SinkReceipt.objects.filter(state_id=1), id="receipts-of-a-state"),
    ],
)
def test_a_lookup_by_a_covered_foreign_key_uses_an_index(queryset):
    # In a transaction: PostgreSQL's SET LOCAL lasts until it ends.
    text = plan(queryset())
    assert uses_an_index(text), text


def test_the_covered_foreign_keys_have_no_index_of_their_own():
    with connection.cursor() as cursor:
        names = {
            name
            for table in (ChatMessage, ChatSession, SinkState, SinkReceipt)
            for name in connection.introspection.get_constraints(cursor, table._meta.db_table)
        }
    for dropped in (
        "sessions_app_chatmessage_session_id_34412ed7",
        "sessions_app_chatsession_owner_id_e76090b8",
        "sessions_app_sinkreceipt_state_id_002d8411",
        "sessions_app_sinkstate_session_id_855ec488",
    ):
        assert dropped not in names
