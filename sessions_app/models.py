"""Chat sessions and their messages.

A `ChatSession` row is also the session -> remote thread map of the design: its key is
(owner, agent_id, project_id, session_id), printed as `user:agent:project:session`.
"""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Greatest
from django.utils import timezone

IDENTIFIER_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
identifier_validator = RegexValidator(
    IDENTIFIER_PATTERN, "Use 1-128 characters of letters, digits, '.', '_', ':' or '-'."
)


class ChatSession(models.Model):
    # No index of its own on this and the other foreign keys below: a unique constraint (here
    # also chat_session_recent) leads with the column, and every write skips one more index.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="chat_sessions",
        db_index=False,
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
    # Set (to a sink name) when the session was pointed at an existing remote thread whose
    # history is not local yet; the next turn reads it (see sessions_app.remote_history).
    history_import_from = models.CharField(max_length=32, blank=True, default="")
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

    session = models.ForeignKey(
        ChatSession, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
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


class SinkStateQuerySet(models.QuerySet):
    def pending(self) -> "SinkStateQuerySet":
        """The states with messages still to deliver."""
        return self.filter(wanted_seq__gt=models.F("delivered_seq"))

    def pending_messages(self) -> int:
        """How many messages the pending ones among these states still have to deliver: up to
        the session's newest (see SinkState.wanted_through)."""
        wanted = Greatest("wanted_seq", "session__last_seq")
        total = self.pending().aggregate(n=models.Sum(wanted - models.F("delivered_seq")))["n"]
        return total or 0


class SinkState(models.Model):
    """Delivery of one session to one persistence sink (Foundry, Zep): the durable outbox.

    The state is pending while `wanted_seq` > `delivered_seq`. A turn raises `wanted_seq` to its
    message where the state was not pending (or creates the state); the background sender
    delivers messages up to it, in order, advances `delivered_seq`, and on reaching
    `wanted_seq` raises it to the session's newest message, which the turns of a pending
    state leave it below. `remote_id` is the session's thread on the sink. `inflight_seq` is
    set while a batch is being sent: if it is still set when a sender claims the row, the last
    sender died mid-batch and the remote side is checked before anything is sent again.
    """

    session = models.ForeignKey(
        ChatSession, on_delete=models.CASCADE, related_name="sink_states", db_index=False
    )
    sink = models.CharField(max_length=32)
    remote_id = models.CharField(max_length=256, null=True, blank=True)  # noqa: DJ001
    wanted_seq = models.PositiveIntegerField(default=0)
    delivered_seq = models.PositiveIntegerField(default=0)
    inflight_seq = models.PositiveIntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_by = models.CharField(max_length=128, blank=True, default="")
    claimed_until = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)

    objects = SinkStateQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["session", "sink"], name="sink_state_unique"),
        ]
        indexes = [
            models.Index(
                fields=["sink", "next_attempt_at"],
                condition=models.Q(wanted_seq__gt=models.F("delivered_seq")),
                name="sink_state_pending",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.sink} {self.session_id}: {self.delivered_seq}/{self.wanted_seq}"

    @property
    def wanted_through(self) -> int:
        """The newest message the sink wants: while pending, the session's newest."""
        if self.wanted_seq <= self.delivered_seq:
            return self.wanted_seq
        return max(self.wanted_seq, self.session.last_seq)

    @property
    def pending_count(self) -> int:
        return max(self.wanted_through - self.delivered_seq, 0)


class SinkReceipt(models.Model):
    """The remote id of one delivered message: the proof that it is on the sink, so it is never
    sent twice."""

    state = models.ForeignKey(
        SinkState, on_delete=models.CASCADE, related_name="receipts", db_index=False
    )
    seq = models.PositiveIntegerField()
    remote_id = models.CharField(max_length=256)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["state", "seq"], name="sink_receipt_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.state_id}#{self.seq} -> {self.remote_id}"


class RemoteDeletion(models.Model):
    """A remote thread to delete because its session was deleted; retried until done."""

    sink = models.CharField(max_length=32)
    remote_id = models.CharField(max_length=256)
    session_key = models.CharField(max_length=600)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_by = models.CharField(max_length=128, blank=True, default="")
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["sink", "remote_id"], name="remote_deletion_unique"),
        ]

    def __str__(self) -> str:
        return f"delete {self.sink} {self.remote_id}"


class SinkHealth(models.Model):
    """The circuit breaker of one sink, shared by every sender process through the database."""

    sink = models.CharField(max_length=32, unique=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    open_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    delivered_total = models.PositiveBigIntegerField(default=0)
    failed_total = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return self.sink
