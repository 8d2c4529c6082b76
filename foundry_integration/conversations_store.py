"""Thread store over the new Foundry conversations API (azure-ai-projects 2.x: the project's
OpenAI-compatible client, `.conversations` and `.conversations.items`).

Items carry no per-item metadata, so the sender's receipts (remote item ids in the ORM) are what
keeps delivery exactly-once here.
"""

import asyncio
from collections.abc import Sequence
from json import JSONDecodeError

import openai

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

# The service takes at most 20 items per items.create call.
ITEMS_PER_CALL = 20
PAGE_SIZE = 100
API_ROLES = {"user", "assistant", "system"}


def sink_error(exc: Exception) -> SinkError:
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, openai.NotFoundError):
        return RemoteNotFound(_describe(exc))
    if isinstance(exc, openai.RateLimitError):
        return RemoteThrottled(_describe(exc), _retry_after(exc))
    return SinkError(_describe(exc))


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        return float(exc.response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}".splitlines()[0][:500]
    if isinstance(exc, openai.APITimeoutError | asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def _text(item) -> str:
    return "".join(getattr(part, "text", "") or "" for part in getattr(item, "content", None) or [])


def _created_ids(created, count: int) -> list[str]:
    """The ids of the `count` items a create call's reply lists, in order."""
    ids = [getattr(item, "id", None) for item in getattr(created, "data", None) or []]
    if len(ids) != count or not all(isinstance(i, str) and i for i in ids):
        raise SinkError(f"the reply names {len(ids)} item ids for {count} items sent")
    return ids


class ConversationsThreadStore:
    api = "conversations"

    def __init__(self, project_client, client: openai.AsyncOpenAI, credential=None):
        self.project_client = project_client
        self.client = client
        self.credential = credential

    async def create_thread(self, *, metadata: dict[str, str]) -> str:
        try:
            conversation = await self.client.conversations.create(metadata=metadata)
        except (TimeoutError, openai.OpenAIError, OSError) as exc:
            raise sink_error(exc) from exc
        return conversation.id

    async def load_messages(self, *, thread_id: str) -> list[RemoteMessage]:
        messages = []
        try:
            async for item in self.client.conversations.items.list(
                thread_id, order="asc", limit=PAGE_SIZE
            ):
                if getattr(item, "type", "") == "message":
                    messages.append(RemoteMessage(item.id, item.role, _text(item)))
        except (TimeoutError, openai.OpenAIError, OSError) as exc:
            raise sink_error(exc) from exc
        return messages

    async def load_recent_messages(self, *, thread_id: str, at_least: int) -> RecentMessages:
        newest_first = []
        try:
            page = await self.client.conversations.items.list(
                thread_id, order="desc", limit=PAGE_SIZE
            )
            while True:
                newest_first += [i for i in page.data if getattr(i, "type", "") == "message"]
                complete = not page.has_next_page()
                if complete or len(newest_first) >= at_least:
                    break
                page = await page.get_next_page()
        except (TimeoutError, openai.OpenAIError, OSError) as exc:
            raise sink_error(exc) from exc
        return RecentMessages(
            [RemoteMessage(i.id, i.role, _text(i)) for i in reversed(newest_first)], complete
        )

    async def append_messages(
        self, *, thread_id: str, messages: Sequence[OutgoingMessage]
    ) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(messages), ITEMS_PER_CALL):
            if start:
                await pace_remote_call()
            chunk = messages[start : start + ITEMS_PER_CALL]
            items = [
                {
                    "type": "message",
                    "role": m.role if m.role in API_ROLES else "assistant",
                    "content": m.content,
                }
                for m in chunk
            ]
            try:
                # The items go as extra_body, which the SDK documents to take precedence over
                # the arguments: given as `items`, each is walked against every input item type
                # the API knows, about 0.5 ms of CPU per message, more than the rest of the call.
                created = await self.client.conversations.items.create(
                    thread_id, items=[], extra_body={"items": items}
                )
                ids += _created_ids(created, len(chunk))
            except (TimeoutError, openai.OpenAIError, OSError, JSONDecodeError, SinkError) as exc:
                error = sink_error(exc)
                if ids:
                    raise AppendInterrupted(ids, error) from exc
                if error is exc:
                    raise
                raise error from exc
        return ids

    async def delete_thread(self, *, thread_id: str) -> None:
        try:
            await self.client.conversations.delete(thread_id)
        except openai.NotFoundError:
            return
        except (TimeoutError, openai.OpenAIError, OSError) as exc:
            raise sink_error(exc) from exc

    async def aclose(self) -> None:
        await self.client.close()
        await self.project_client.close()
        if self.credential is not None:
            await self.credential.close()
