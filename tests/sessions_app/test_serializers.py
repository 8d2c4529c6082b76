"""The chat reply is built without DRF's per-request field copies; it must say what the declared
fields (which the schema shows) say. The request serializers copy their fields shallowly; each
instance must still validate with fields of its own."""

import pytest
from rest_framework import serializers

from sessions_app.models import ChatSession
from sessions_app.serializers import ChatReplySerializer, ChatRequestSerializer, FlatSerializer
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


def test_each_request_serializer_validates_with_fields_of_its_own():
    bad = ChatRequestSerializer(data={"message": 7, "session_id": "no spaces"})
    good = ChatRequestSerializer(data={"message": "hi", "session_id": "s1"})
    assert not bad.is_valid()
    assert good.is_valid(), good.errors
    assert set(bad.errors) == {"message", "session_id"}
    assert good.validated_data == {"message": "hi", "session_id": "s1"}
    for name in ("message", "session_id", "agent_id", "project_id"):
        assert bad.fields[name] is not good.fields[name]
        assert bad.fields[name].parent is bad
        assert good.fields[name].parent is good
        # The class's declared fields stay unbound.
        assert ChatRequestSerializer._declared_fields[name].parent is None


@pytest.mark.parametrize(
    "field",
    [
        lambda: serializers.ListField(child=serializers.CharField()),
        lambda: serializers.DictField(),
        lambda: ChatRequestSerializer(),
    ],
)
def test_a_flat_serializer_refuses_nested_fields(field):
    with pytest.raises(TypeError, match="plain fields only"):
        type("Nested", (FlatSerializer,), {"inner": field()})
