"""Chat sessions and their messages.

A `ChatSession` row is also the session -> remote thread map of the design: its key is
(owner, agent_id, project_id, session_id), printed as `user:agent:project:session`.
"""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

IDENTIFIER_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
identifier_validator = RegexValidator(
    IDENTIFIER_PATTERN, "Use 1-128 characters of letters, digits, '.', '_', ':' or '-'."
)


class ChatSession(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions"
    )
    session_id = models.CharField(max_length=128, validators=[identifier_validator])
    agent_id = models.CharField(max_length=128, validators=[identifier_validator])
    project_id = models.CharField(max_length=128, validators=[identifier_validator])
    # Null until the session has a Foundry thread (the API returns it as `thread_id: null`).
    foundry_thread_id = models.CharField(  # noqa: DJ001
        max_length=256, null=True, blank=True, db_index=True
    )
    # Highest message sequence number so far; the next message takes last_seq + 1 under the
    # row lock, which keeps sequence numbers gapless on every database.
    last_seq = models.PositiveIntegerField(default=0)
    user_turns = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_activity_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "agent_id", "project_id", "session_id"],
                name="chat_session_key_unique",
            )
        ]
        indexes = [
            models.Index(fields=["owner", "-last_activity_at", "-id"], name="chat_session_recent"),
        ]

    def __str__(self) -> str:
        return self.session_key

    @property
    def session_key(self) -> str:
        """The design's session key, `user:agent:project:session`."""
        return f"{self.owner_id}:{self.agent_id}:{self.project_id}:{self.session_id}"


class ChatMessage(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        SYSTEM = "system"

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    seq = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField()
    agent_id = models.CharField(max_length=128)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="chat_message_seq_unique"),
        ]
        ordering = ["session", "seq"]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.seq} {self.role}"
