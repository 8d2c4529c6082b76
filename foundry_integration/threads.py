"""The Foundry thread store: one interface, one adapter per Foundry API.

Adapters raise the sink errors of `sessions_app.sinks` (RemoteNotFound, RemoteThrottled,
AppendInterrupted, SinkError), never SDK exceptions, so the sender handles every API alike.
"""

from collections.abc import Sequence
from typing import Protocol

from sessions_app.sinks import OutgoingMessage, RecentMessages, RemoteMessage, SessionInfo

# Foundry's limits on thread metadata.
METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512


class ThreadStore(Protocol):
    api: str

    async def create_thread(self, *, metadata: dict[str, str]) -> str:
        """Create a thread labelled with `metadata`; return its id."""

    async def load_messages(self, *, thread_id: str) -> list[RemoteMessage]:
        """Every message of the thread, oldest first."""

    async def load_recent_messages(self, *, thread_id: str, at_least: int) -> RecentMessages:
        """The newest messages, oldest first, read from the newest end in pages: at least
        `at_least` (all, in a shorter thread), complete when no older message is left."""

    async def append_messages(
        self, *, thread_id: str, messages: Sequence[OutgoingMessage]
    ) -> list[str]:
        """Store the messages in order; return their remote ids (AppendInterrupted: some were)."""

    async def delete_thread(self, *, thread_id: str) -> None:
        """Delete the thread; a thread that is already gone counts as deleted."""

    async def aclose(self) -> None: ...


def validate_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """Check Foundry's metadata limits before any call; raise ValueError naming the offender."""
    if len(metadata) > METADATA_MAX_KEYS:
        raise ValueError(f"metadata has {len(metadata)} keys; Foundry allows {METADATA_MAX_KEYS}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"metadata {key!r}: keys and values must be strings")
        if len(key) > METADATA_MAX_KEY_CHARS:
            raise ValueError(f"metadata key {key[:20]!r}... is over {METADATA_MAX_KEY_CHARS} chars")
        if len(value) > METADATA_MAX_VALUE_CHARS:
            raise ValueError(f"metadata {key!r} is over {METADATA_MAX_VALUE_CHARS} chars")
    return metadata


def thread_metadata(session: SessionInfo) -> dict[str, str]:
    """The design's thread metadata, validated."""
    return validate_metadata(
        {
            "user_id": session.user_id,
            "agent_id": session.agent_id,
            "project_id": session.project_id,
            "session_id": session.session_id,
            "created_at": session.created_at.isoformat(),
        }
    )
