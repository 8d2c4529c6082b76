"""Thread store over the classic Agent Service threads API (azure-ai-agents, async client)."""

import asyncio
from collections.abc import Sequence

from azure.ai.agents.aio import AgentsClient
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

from sessions_app.sinks import (
    AppendInterrupted,
    OutgoingMessage,
    RecentMessages,
    RemoteMessage,
    RemoteNotFound,
    RemoteThrottled,
    SinkError,
    pace_remote_call,
)

# The API knows only these two roles; other roles are sent as assistant and kept in metadata.
API_ROLES = {"user", "assistant"}
PAGE_SIZE = 100


def sink_error(exc: Exception) -> SinkError:
    """The sink error for an SDK or transport exception (the message never holds credentials:
    azure-core puts none in it)."""
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, ResourceNotFoundError):
        return RemoteNotFound(_describe(exc))
    if isinstance(exc, HttpResponseError) and exc.status_code == 429:
        return RemoteThrottled(_describe(exc), retry_after(exc))
    return SinkError(_describe(exc))


def retry_after(exc: HttpResponseError) -> float | None:
    headers = exc.response.headers if exc.response is not None else {}
    try:
        return float(headers.get("Retry-After", ""))
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    if isinstance(exc, HttpResponseError) and exc.status_code:
        first_line = (exc.message or str(exc)).splitlines()[0]
        return f"HTTP {exc.status_code}: {first_line}"[:500]
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def _remote_message(message) -> RemoteMessage:
    metadata = message.metadata or {}
    # The SDK's role is an enum, whose str() is its name, not its value.
    role = metadata.get("role") or getattr(message.role, "value", message.role)
    seq = metadata.get("seq", "")
    return RemoteMessage(message.id, role, _text(message), int(seq) if seq.isdigit() else None)


def _text(message) -> str:
    return "".join(
        part.text.value for part in message.content or [] if getattr(part, "type", "") == "text"
    )


def _http_response(pipeline_response, deserialized, headers):
    """For an operation's `cls`: its raw HTTP response."""
    return pipeline_response.http_response


def _created_id(response) -> str:
    """The id of the message a create call's reply describes."""
    try:
        message_id = response.json()["id"]
    except (ValueError, KeyError, TypeError):
        message_id = None
    if not isinstance(message_id, str) or not message_id:
        raise SinkError(f"HTTP {response.status_code}: the reply names no message id")
    return message_id


class AgentsThreadStore:
    api = "agents"

    def __init__(self, client: AgentsClient, credential=None):
        self.client = client
        self.credential = credential

    async def create_thread(self, *, metadata: dict[str, str]) -> str:
        try:
            thread = await self.client.threads.create(metadata=metadata)
        except (TimeoutError, AzureError, OSError) as exc:
            raise sink_error(exc) from exc
        return thread.id

    async def load_messages(self, *, thread_id: str) -> list[RemoteMessage]:
        messages = []
        pages = self.client.messages.list(thread_id, order="asc", limit=PAGE_SIZE).by_page()
        try:
            async for page in pages:
                page_messages = [message async for message in page]
                messages += [_remote_message(m) for m in page_messages]
                # The SDK would ask for one more, empty page after the last; a short page is
                # the last (a round trip saved on every cold start).
                if len(page_messages) < PAGE_SIZE:
                    break
        except (TimeoutError, AzureError, OSError) as exc:
            raise sink_error(exc) from exc
        return messages

    async def load_recent_messages(self, *, thread_id: str, at_least: int) -> RecentMessages:
        newest_first = []
        complete = False
        pages = self.client.messages.list(thread_id, order="desc", limit=PAGE_SIZE).by_page()
        try:
            async for page in pages:
                page_messages = [message async for message in page]
                newest_first += page_messages
                if len(page_messages) < PAGE_SIZE:
                    complete = True
                    break
                if len(newest_first) >= at_least:
                    break
        except (TimeoutError, AzureError, OSError) as exc:
            raise sink_error(exc) from exc
        return RecentMessages([_remote_message(m) for m in reversed(newest_first)], complete)

    async def append_messages(
        self, *, thread_id: str, messages: Sequence[OutgoingMessage]
    ) -> list[str]:
        # The API takes one message per call; stop at the first failure so that order holds.
        ids: list[str] = []
        for message in messages:
            if ids:
                await pace_remote_call()
            metadata = {"seq": str(message.seq), "agent_id": message.agent_id[:512]}
            role = message.role
            if role not in API_ROLES:
                metadata["role"], role = role, "assistant"
            try:
                # Only the new message's id is kept: unstreamed, the SDK would decode the reply
                # twice and build a ThreadMessage model of it, a third of the call's CPU.
                response = await self.client.messages.create(
                    thread_id,
                    role=role,
                    content=message.content,
                    metadata=metadata,
                    stream=True,
                    cls=_http_response,
                )
                await response.read()
                ids.append(_created_id(response))
            except (TimeoutError, AzureError, OSError, SinkError) as exc:
                error = sink_error(exc)
                if ids:
                    raise AppendInterrupted(ids, error) from exc
                if error is exc:
                    raise
                raise error from exc
        return ids

    async def delete_thread(self, *, thread_id: str) -> None:
        try:
            await self.client.threads.delete(thread_id)
        except ResourceNotFoundError:
            return
        except (TimeoutError, AzureError, OSError) as exc:
            raise sink_error(exc) from exc

    async def aclose(self) -> None:
        await self.client.close()
        if self.credential is not None:
            await self.credential.close()
