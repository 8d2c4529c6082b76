"""Zep adapters, one per SDK: `cloud` (zep-cloud, Zep Cloud API v4) and `community` (zep-python,
the self-hosted Community Edition, API v2). Both raise the sink errors of sessions_app.sinks.

Messages reach an adapter already split into parts (`Part`), packed so that no call carries more
than ZEP_MAX_MESSAGES_PER_CALL parts and no message straddles two calls; each part carries its
message's seq and its part number in metadata, which is how a thread is read back and checked.
"""

import asyncio
import uuid
from dataclasses import dataclass

import httpx

from sessions_app.sinks import RemoteNotFound, RemoteThrottled, SessionInfo, SinkError

ZEP_ROLES = {"user", "assistant", "system"}


@dataclass(frozen=True)
class Part:
    seq: int
    part: int
    parts: int
    role: str
    content: str
    name: str


@dataclass(frozen=True)
class StoredPart:
    remote_id: str
    seq: int | None
    part: int
    role: str
    content: str


def _error(exc: Exception, api_error: type) -> SinkError:
    if isinstance(exc, api_error):
        status = getattr(exc, "status_code", None)
        body = str(getattr(exc, "body", ""))[:300]
        message = f"HTTP {status}: {body}"
        if status == 404:
            return RemoteNotFound(message)
        if status == 429:
            headers = getattr(exc, "headers", None) or {}
            try:
                retry_after = float(headers.get("retry-after", ""))
            except ValueError:
                retry_after = None
            return RemoteThrottled(message, retry_after)
        return SinkError(message)
    if isinstance(exc, httpx.TimeoutException | asyncio.TimeoutError):
        return SinkError("timed out")
    return SinkError(f"{type(exc).__name__}: {exc}".splitlines()[0][:500])


def _role(role) -> str:
    return str(getattr(role, "value", role) or "")


def _metadata_int(metadata: dict | None, key: str) -> int | None:
    value = (metadata or {}).get(key)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class _ZepStore:
    """What both adapters share: their own httpx client, and SDK errors as sink errors."""

    api_error: type[Exception]

    def __init__(self, *, timeout: float):
        self.http = httpx.AsyncClient(timeout=timeout)

    @property
    def _failures(self) -> tuple[type[BaseException], ...]:
        return (TimeoutError, self.api_error, httpx.HTTPError, OSError)

    async def _call(self, call):
        try:
            return await call
        except self._failures as exc:
            raise _error(exc, self.api_error) from exc

    async def _delete(self, call) -> None:
        """A delete; a thread that is already gone counts as deleted."""
        try:
            await self._call(call)
        except RemoteNotFound:
            return

    async def aclose(self) -> None:
        await self.http.aclose()


class CloudStore(_ZepStore):
    """Zep Cloud (API v4): server-assigned user and thread uuids; Idempotency-Key on writes."""

    sdk = "cloud"

    def __init__(self, *, base_url: str, api_key: str, timeout: float):
        from zep_cloud import AsyncZep
        from zep_cloud.core.api_error import ApiError

        super().__init__(timeout=timeout)
        # The sender retries on its own schedule; the SDK's retries would multiply the wait.
        self.client = AsyncZep(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            httpx_client=self.http,
        )
        self.api_error = ApiError

    async def ensure_user(self, *, user_id: str) -> str:
        from zep_cloud.errors import ConflictError

        try:
            user = await self.client.user.create(user_id=user_id)
        except ConflictError:
            # Made by an earlier attempt whose answer we never stored.
            user = await self._call(self.client.user.lookup(user_id=user_id))
        except self._failures as exc:
            raise _error(exc, self.api_error) from exc
        return user.uuid_

    async def create_thread(self, *, user_ref: str, session: SessionInfo) -> str:
        thread = await self._call(self.client.thread.create(user_uuid=user_ref))
        return thread.uuid_

    async def add(self, *, remote_id: str, parts: list[Part], idempotency_key: str) -> list[str]:
        from zep_cloud import AddMessage

        messages = [
            AddMessage(
                role=p.role,
                name=p.name,
                content=p.content,
                metadata={"seq": p.seq, "part": p.part, "parts": p.parts},
            )
            for p in parts
        ]
        result = await self._call(
            self.client.thread.add_messages(
                remote_id, messages=messages, idempotency_key=idempotency_key
            )
        )
        return [m.uuid_ for m in result.messages or []]

    async def load(self, *, remote_id: str) -> list[StoredPart]:
        stored = []
        try:
            pager = await self.client.thread.list_messages(remote_id, page_size=200)
            async for m in pager:
                stored.append(
                    StoredPart(
                        m.uuid_,
                        _metadata_int(m.metadata, "seq"),
                        _metadata_int(m.metadata, "part") or 1,
                        _role(m.role),
                        m.content or "",
                    )
                )
        except self._failures as exc:
            raise _error(exc, self.api_error) from exc
        return stored

    async def delete(self, *, remote_id: str) -> None:
        await self._delete(self.client.thread.delete(remote_id))


class CommunityStore(_ZepStore):
    """Zep Community Edition (API v2): our own user and session ids; no write ids come back, so
    a delivered part is known by its seq."""

    sdk = "community"

    def __init__(self, *, base_url: str, api_key: str, timeout: float):
        from zep_python.client import AsyncZep
        from zep_python.core.api_error import ApiError

        super().__init__(timeout=timeout)
        self.client = AsyncZep(
            base_url=base_url, api_key=api_key, timeout=timeout, httpx_client=self.http
        )
        self.api_error = ApiError

    async def ensure_user(self, *, user_id: str) -> str:
        try:
            await self.client.user.add(user_id=user_id)
        except self.api_error as exc:
            # 400: the user exists already (made by an earlier attempt).
            if getattr(exc, "status_code", None) != 400:
                raise _error(exc, self.api_error) from exc
        except (TimeoutError, httpx.HTTPError, OSError) as exc:
            raise _error(exc, self.api_error) from exc
        return user_id

    async def create_thread(self, *, user_ref: str, session: SessionInfo) -> str:
        session_id = f"chat-{uuid.uuid4().hex}"
        metadata = {
            "user_id": session.user_id,
            "agent_id": session.agent_id,
            "project_id": session.project_id,
            "session_id": session.session_id,
        }
        await self._call(
            self.client.memory.add_session(
                session_id=session_id, user_id=user_ref, metadata=metadata
            )
        )
        return session_id

    async def add(self, *, remote_id: str, parts: list[Part], idempotency_key: str) -> list[str]:
        from zep_python.types import Message

        messages = [
            Message(
                role=p.name or p.role,
                role_type=p.role,
                content=p.content,
                metadata={"seq": p.seq, "part": p.part, "parts": p.parts},
            )
            for p in parts
        ]
        # The Community Edition server quietly re-creates an unknown session on add; look first,
        # so a lost session is noticed (and replaced with the whole history) instead.
        await self._call(self.client.memory.get_session(remote_id))
        await self._call(self.client.memory.add(remote_id, messages=messages))
        return [f"{remote_id}#{p.seq}.{p.part}" for p in parts]

    async def load(self, *, remote_id: str) -> list[StoredPart]:
        stored = []
        page = 1
        while True:
            result = await self._call(
                self.client.memory.get_session_messages(remote_id, limit=100, cursor=page)
            )
            rows = result.messages or []
            if not rows:
                return stored
            stored += [
                StoredPart(
                    m.uuid_ or f"{remote_id}#{_metadata_int(m.metadata, 'seq')}",
                    _metadata_int(m.metadata, "seq"),
                    _metadata_int(m.metadata, "part") or 1,
                    _role(m.role_type or m.role),
                    m.content or "",
                )
                for m in rows
            ]
            page += 1

    async def delete(self, *, remote_id: str) -> None:
        await self._delete(self.client.memory.delete(remote_id))
