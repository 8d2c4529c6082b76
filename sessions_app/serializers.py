"""Request and response shapes of the chat API, shared by REST and WebSocket."""

import copy

from django.conf import settings
from rest_framework import serializers

from sessions_app.agents import agent_ids
from sessions_app.models import IDENTIFIER_PATTERN, ChatMessage, ChatSession

IDENTIFIER_HELP = "1-128 characters of letters, digits, '.', '_', ':' or '-'."


class StrictCharField(serializers.CharField):
    """A CharField that takes only JSON strings (DRF's turns numbers into text) of valid UTF-8."""

    default_error_messages = {
        "not_a_string": "Must be a string.",
        "bad_text": "Must be valid Unicode text.",
    }

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        try:
            # A lone surrogate ("\ud800" in JSON) parses but cannot be stored.
            data.encode("utf-8")
        except UnicodeEncodeError:
            self.fail("bad_text")
        return super().to_internal_value(data)


class IdentifierField(serializers.RegexField, StrictCharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", IDENTIFIER_HELP)
        super().__init__(
            IDENTIFIER_PATTERN, error_messages={"invalid": f"Use {IDENTIFIER_HELP}"}, **kwargs
        )


def validate_agent_id(value: str) -> str:
    if value not in settings.CHAT_AGENTS:
        raise serializers.ValidationError(
            f"Unknown agent {value!r}; known agents: {', '.join(agent_ids())}."
        )
    return value


class FlatSerializer(serializers.Serializer):
    """A serializer of plain fields (no nested serializers, no querysets), whose instances take
    shallow copies of the declared fields. DRF deep-copies them, which builds every field anew
    from its arguments: for the chat request, more than half of what its validation costs on
    every turn. Each instance still binds fields of its own."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, field in cls._declared_fields.items():
            # A shallow copy would share a nested field's child or a related field's queryset.
            nested = (
                serializers.BaseSerializer,
                serializers.RelatedField,
                serializers.ManyRelatedField,
            )
            if isinstance(field, nested) or hasattr(field, "child"):
                raise TypeError(f"{cls.__name__}.{name}: a FlatSerializer takes plain fields only")

    def get_fields(self) -> dict[str, serializers.Field]:
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}


class ChatRequestSerializer(FlatSerializer):
    message = StrictCharField(max_length=settings.CHAT_MAX_MESSAGE_CHARS)
    session_id = IdentifierField(help_text=f"{IDENTIFIER_HELP} Omit it to start a new session.")
    agent_id = IdentifierField(validators=[validate_agent_id])
    project_id = IdentifierField()


class SessionLookupSerializer(FlatSerializer):
    """The query parameters that pick one of the sessions sharing a session_id."""

    agent_id = IdentifierField()
    project_id = IdentifierField()

    def validate(self, attrs):
        attrs.setdefault("agent_id", settings.CHAT_DEFAULT_AGENT)
        attrs.setdefault("project_id", settings.CHAT_DEFAULT_PROJECT)
        return attrs


class ChatReplySerializer(serializers.Serializer):
    session_id = serializers.CharField(source="session.session_id")
    agent_id = serializers.CharField(source="session.agent_id")
    project_id = serializers.CharField(source="session.project_id")
    reply = serializers.CharField()
    thread_id = serializers.CharField(source="session.foundry_thread_id", allow_null=True)
    persistence = serializers.ChoiceField(choices=["local", "foundry"])

    def to_representation(self, turn) -> dict:
        # The fields above, read directly: every turn answers with this, and DRF would first
        # deep-copy the declared fields (about 60 us a reply). The fields stay for the schema.
        session = turn.session
        return {
            "session_id": session.session_id,
            "agent_id": session.agent_id,
            "project_id": session.project_id,
            "reply": turn.reply,
            "thread_id": session.foundry_thread_id,
            "persistence": turn.persistence,
        }


class SessionSerializer(serializers.ModelSerializer):
    thread_id = serializers.CharField(source="foundry_thread_id", allow_null=True)
    message_count = serializers.IntegerField(source="last_seq")

    class Meta:
        model = ChatSession
        fields = [
            "session_id",
            "agent_id",
            "project_id",
            "thread_id",
            "message_count",
            "created_at",
            "updated_at",
            "last_activity_at",
        ]
        read_only_fields = fields


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = ChatMessage
        fields = ["seq", "role", "content", "agent_id", "created_at"]
        read_only_fields = fields
