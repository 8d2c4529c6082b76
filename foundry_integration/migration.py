"""Moving sessions from classic Agent Service threads to Foundry conversations.

For each session, under a claim on its SinkState (so the background sender leaves it alone; new
turns wait as pending and follow to the conversation): read the thread, create the conversation
once, copy the messages the conversation does not have yet, then, in one transaction, point the
session at the conversation and re-key its receipts. Progress is kept in ThreadMigration and
checked against the conversation itself, so a run that stopped anywhere resumes without copying
a message twice.
"""

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from foundry_integration.config import FoundryConfig
from foundry_integration.models import ThreadMigration
from foundry_integration.sink import FoundrySink, thread_api_of, thread_store
from foundry_integration.threads import thread_metadata
from sessions_app.models import ChatSession, SinkReceipt, SinkState
from sessions_app.sinks import OutgoingMessage
from sessions_app.sync import db, session_info

logger = logging.getLogger(__name__)

COPY_CHUNK = 20


class MigrationBusy(Exception):
    """A sender holds the session, or a batch of it is in flight: try again later."""


@dataclass
class MigrationResult:
    session_key: str
    copied: int
    conversation_id: str


def sessions_to_migrate() -> list[SinkState]:
    return list(
        SinkState.objects.filter(sink=FoundrySink.name, remote_id__startswith="thread_")
        .select_related("session")
        .order_by("id")
    )


def _worker_name() -> str:
    return f"migration:{socket.gethostname()}:{os.getpid()}"


@transaction.atomic
def _claim(state: SinkState, worker: str) -> ThreadMigration:
    now = timezone.now()
    row = SinkState.objects.select_for_update().get(pk=state.pk)
    if row.claimed_by not in ("", worker) and row.claimed_until and row.claimed_until > now:
        raise MigrationBusy(f"claimed by {row.claimed_by}")
    if row.inflight_seq is not None:
        raise MigrationBusy("a batch is in flight; let the sender finish it first")
    if thread_api_of(row.remote_id or "") != "agents":
        raise MigrationBusy("already migrated")
    _renew(state, worker)
    migration, _ = ThreadMigration.objects.get_or_create(
        state=row, defaults={"source_id": row.remote_id}
    )
    if migration.source_id != row.remote_id:
        # The thread was replaced since an earlier run: start over for the new one.
        migration.source_id, migration.target_id, migration.copied = row.remote_id, "", 0
        migration.save()
    return migration


def _renew(state: SinkState, worker: str) -> None:
    lease_end = timezone.now() + timedelta(seconds=settings.SYNC_LEASE_S)
    SinkState.objects.filter(pk=state.pk).update(claimed_by=worker, claimed_until=lease_end)


def _release(state: SinkState, worker: str) -> None:
    SinkState.objects.filter(pk=state.pk, claimed_by=worker).update(
        claimed_by="", claimed_until=None, next_attempt_at=timezone.now()
    )


def _save_progress(migration: ThreadMigration, **fields) -> None:
    for name, value in fields.items():
        setattr(migration, name, value)
    ThreadMigration.objects.filter(pk=migration.pk).update(**fields)


@transaction.atomic
def _switch(state: SinkState, migration: ThreadMigration, new_ids: list[str], old_ids: list[str]):
    """Point the session at the conversation and re-key its receipts, all or nothing."""
    ChatSession.objects.select_for_update().filter(pk=state.session_id).update(
        foundry_thread_id=migration.target_id
    )
    new_for_old = dict(zip(old_ids, new_ids, strict=True))
    for receipt in SinkReceipt.objects.filter(state=state):
        if receipt.remote_id in new_for_old:
            receipt.remote_id = new_for_old[receipt.remote_id]
            receipt.save(update_fields=["remote_id"])
    SinkState.objects.filter(pk=state.pk).update(remote_id=migration.target_id)
    _save_progress(migration, finished_at=timezone.now(), last_error="")


async def migrate_session(state: SinkState, *, worker: str | None = None) -> MigrationResult:
    """Copy one session's classic thread into a conversation and switch the session to it."""
    worker = worker or _worker_name()
    migration = await db(_claim)(state, worker)
    config = FoundryConfig.from_settings()
    source, target = thread_store(config, "agents"), thread_store(config, "conversations")
    try:
        messages = await source.load_messages(thread_id=migration.source_id)
        if not migration.target_id:
            metadata = thread_metadata(session_info(state.session))
            target_id = await target.create_thread(metadata=metadata)
            await db(_save_progress)(migration, target_id=target_id)
        # The conversation itself says how far an earlier run got.
        landed = await target.load_messages(thread_id=migration.target_id)
        new_ids = [m.remote_id for m in landed]
        while len(new_ids) < len(messages):
            await db(_renew)(state, worker)
            chunk = messages[len(new_ids) : len(new_ids) + COPY_CHUNK]
            outgoing = [
                OutgoingMessage(seq=0, role=m.role, content=m.content, agent_id="") for m in chunk
            ]
            new_ids += await target.append_messages(
                thread_id=migration.target_id, messages=outgoing
            )
            await db(_save_progress)(migration, copied=len(new_ids))
        await db(_switch)(state, migration, new_ids, [m.remote_id for m in messages])
        logger.info(
            "Migrated session %s from Foundry thread %s to conversation %s: %d messages",
            state.session.session_key,
            migration.source_id,
            migration.target_id,
            len(new_ids),
        )
        return MigrationResult(state.session.session_key, len(new_ids), migration.target_id)
    except Exception as exc:
        await db(_save_progress)(migration, last_error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        await db(_release)(state, worker)
        await source.aclose()
        await target.aclose()
