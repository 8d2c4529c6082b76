"""The Zep sink: every turn also goes to Zep memory when ZEP_API_URL and ZEP_API_KEY are set,
whatever the Foundry flag says. It rides the same background sender as Foundry (sessions_app.sync)
but has its own state, backoff and breaker, so neither slows the other."""

import asyncio
import logging
import weakref
from collections.abc import Sequence

from django.conf import settings

from sessions_app.sinks import (
    AppendInterrupted,
    OutgoingMessage,
    RemoteMessage,
    SessionInfo,
    Sink,
    SinkError,
    SinkStatus,
    pace_remote_call,
)
from sessions_app.sync import db
from zep_integration.models import ZepUser
from zep_integration.stores import CloudStore, CommunityStore, Part

logger = logging.getLogger(__name__)

SDKS = {"cloud": CloudStore, "community": CommunityStore}


def split_content(text: str, max_chars: int) -> list[str]:
    """`text` in consecutive parts of at most `max_chars` characters (one empty part for '')."""
    return [text[i : i + max_chars] for i in range(0, len(text), max_chars)] or [""]


def pack_calls(messages: Sequence[OutgoingMessage], max_chars: int, per_call: int):
    """Split messages into parts and group them into calls of at most `per_call` parts, never
    splitting one message's parts over two calls. Yields (messages, parts) per call."""
    call_messages: list[OutgoingMessage] = []
    call_parts: list[Part] = []
    for message in messages:
        texts = split_content(message.content, max_chars)
        parts = [
            Part(
                seq=message.seq,
                part=number,
                parts=len(texts),
                role=message.role
                if message.role in ("user", "assistant", "system")
                else "assistant",
                content=text,
                name=message.agent_id if message.role == "assistant" else message.role,
            )
            for number, text in enumerate(texts, start=1)
        ]
        if call_parts and len(call_parts) + len(parts) > per_call:
            yield call_messages, call_parts
            call_messages, call_parts = [], []
        call_messages.append(message)
        call_parts += parts
    if call_parts:
        yield call_messages, call_parts


def _known_zep_user(user_pk: str, sdk: str) -> str | None:
    return (
        ZepUser.objects.filter(user_id=user_pk, sdk=sdk)
        .values_list("remote_user_id", flat=True)
        .first()
    )


def base_url(sdk: str, url: str) -> str:
    """Cloud: the v4 API root; Community: the server root (its SDK adds /api/v2)."""
    url = url.rstrip("/")
    if sdk == "cloud":
        return url if url.endswith("/api/v4") else f"{url}/api/v4"
    return url.removesuffix("/api/v2")


class ZepSink(Sink):
    name = "zep"
    label = "Zep"

    def __init__(self) -> None:
        self.sdk = settings.ZEP_SDK
        self._stores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def status(self) -> SinkStatus:
        if not settings.ZEP_API_URL or not settings.ZEP_API_KEY:
            return SinkStatus(False, "ZEP_API_URL or ZEP_API_KEY is not set")
        if self.sdk not in SDKS:
            return SinkStatus(False, f"ZEP_SDK must be one of {', '.join(SDKS)}")
        return SinkStatus(True, "")

    def remote_kind(self, remote_id: str) -> str:
        return self.sdk

    def _store(self):
        loop = asyncio.get_running_loop()
        if loop not in self._stores:
            self._stores[loop] = SDKS[self.sdk](
                base_url=base_url(self.sdk, settings.ZEP_API_URL),
                api_key=settings.ZEP_API_KEY,
                timeout=settings.ZEP_TIMEOUT_S,
            )
        return self._stores[loop]

    async def create_remote(self, *, session: SessionInfo) -> str:
        store = self._store()
        user_ref = await self._zep_user(store, session.user_id)
        thread_id = await store.create_thread(user_ref=user_ref, session=session)
        logger.info("Created Zep thread %s for session %s", thread_id, session.session_key)
        return thread_id

    async def _zep_user(self, store, user_pk: str) -> str:
        """The Zep user of a chat user, made in Zep the first time and remembered."""
        known = await db(_known_zep_user)(user_pk, store.sdk)
        if known:
            return known
        remote = await store.ensure_user(user_id=f"chat-user-{user_pk}")
        await db(ZepUser.objects.get_or_create)(
            user_id=int(user_pk), sdk=store.sdk, defaults={"remote_user_id": remote}
        )
        return remote

    async def append(self, *, remote_id: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        store = self._store()
        ids: list[str] = []
        calls = pack_calls(
            messages, settings.ZEP_MAX_MESSAGE_CHARS, settings.ZEP_MAX_MESSAGES_PER_CALL
        )
        for n, (call_messages, parts) in enumerate(calls):
            if n:
                await pace_remote_call()
            # The same batch always gets the same key, so a retried call is not applied twice.
            key = f"{remote_id}:{call_messages[0].seq}-{call_messages[-1].seq}"
            try:
                part_ids = await store.add(remote_id=remote_id, parts=parts, idempotency_key=key)
            except SinkError as exc:
                if ids:
                    raise AppendInterrupted(ids, exc) from exc
                raise
            # A message's receipt is the id of its first part.
            first_ids = iter(part_ids)
            for part in parts:
                part_id = next(first_ids, f"{remote_id}#{part.seq}.{part.part}")
                if part.part == 1:
                    ids.append(part_id)
        return ids

    async def load(self, *, remote_id: str) -> list[RemoteMessage]:
        """The thread's messages with their parts joined again, oldest first."""
        messages: list[RemoteMessage] = []
        for part in await self._store().load(remote_id=remote_id):
            if part.part > 1 and messages and messages[-1].seq == part.seq:
                last = messages.pop()
                messages.append(
                    RemoteMessage(last.remote_id, last.role, last.content + part.content, last.seq)
                )
            else:
                messages.append(RemoteMessage(part.remote_id, part.role, part.content, part.seq))
        return messages

    async def delete_remote(self, *, remote_id: str) -> None:
        await self._store().delete(remote_id=remote_id)
        logger.info("Deleted Zep thread %s", remote_id)

    async def aclose(self) -> None:
        store = self._stores.pop(asyncio.get_running_loop(), None)
        if store is not None:
            await store.aclose()
