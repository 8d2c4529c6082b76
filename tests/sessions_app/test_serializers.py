"""The chat reply is built without DRF's per-request field copies; it must say what the declared
fields (which the schema shows) say."""

import pytest
from rest_framework import serializers

from sessions_app.models import ChatSession
from sessions_app.serializers import ChatReplySerializer
from sessions_app.services import ChatTurn


@pytest.mark.parametrize(("thread_id", "persistence"), [(None, "local"), ("thread_abc", "foundry")])
def test_the_reply_matches_its_declared_fields(thread_id, persistence):
    session = ChatSession(
        session_id="s1", agent_id="echo", project_id="p1", foundry_thread_id=thread_id
    )
    turn = ChatTurn(session=session, reply='Turn 1: you said "hi".', persistence=persistence)
    reply = ChatReplySerializer(turn)
    declared = serializers.Serializer.to_representation(reply, turn)
    assert reply.data == declared
    assert list(reply.data) == list(declared)
