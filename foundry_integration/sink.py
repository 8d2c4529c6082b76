"""The Foundry sink: mirrors every session to an Azure AI Foundry thread while USE_FOUNDRY_THREADS
is on and the connection is configured."""

import asyncio
import logging
import weakref
from collections.abc import Sequence

from foundry_integration.config import FoundryConfig
from foundry_integration.flag import foundry_threads_enabled
from foundry_integration.threads import ThreadStore, thread_metadata
from sessions_app.sinks import (
    OutgoingMessage,
    RecentMessages,
    RemoteMessage,
    SessionInfo,
    Sink,
    SinkStatus,
)

logger = logging.getLogger(__name__)


def thread_store(config: FoundryConfig, api: str | None = None) -> ThreadStore:
    """The adapter for `api` (default: the configured FOUNDRY_THREAD_API)."""
    if (api or config.thread_api) == "conversations":
        from foundry_integration.client import conversations_clients
        from foundry_integration.conversations_store import ConversationsThreadStore

        return ConversationsThreadStore(*conversations_clients(config))
    from foundry_integration.agents_store import AgentsThreadStore
    from foundry_integration.client import agents_client

    return AgentsThreadStore(*agents_client(config))


def thread_api_of(thread_id: str) -> str:
    """Which Foundry API holds a thread, by its id: conversations are `conv_...`, classic threads
    `thread_...`. Threads stay on their API until migrated (`foundry_migrate_threads`)."""
    return "conversations" if thread_id.startswith("conv_") else "agents"


class FoundrySink(Sink):
    name = "foundry"
    label = "Foundry"
    session_field = "foundry_thread_id"

    def __init__(self) -> None:
        self.config = FoundryConfig.from_settings()
        # Checked once: status() runs on every turn, and the check parses the endpoint.
        self._problem = self.config.problem()
        self._warned = False
        # SDK clients belong to the event loop they were made on; one per API.
        self._stores: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, ThreadStore]
        ] = weakref.WeakKeyDictionary()

    def status(self) -> SinkStatus:
        if not foundry_threads_enabled():
            return SinkStatus(False, "USE_FOUNDRY_THREADS is off")
        problem = self._problem
        if problem:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "USE_FOUNDRY_THREADS is on but %s: running on local storage only", problem
                )
            return SinkStatus(False, problem)
        return SinkStatus(True, "")

    def remote_kind(self, remote_id: str) -> str:
        return thread_api_of(remote_id)

    def _store(self, api: str | None = None) -> ThreadStore:
        """The adapter for `api` (default: the configured one) on the running event loop."""
        api = api or self.config.thread_api
        stores = self._stores.setdefault(asyncio.get_running_loop(), {})
        if api not in stores:
            stores[api] = thread_store(self.config, api)
        return stores[api]

    async def create_remote(self, *, session: SessionInfo) -> str:
        thread_id = await self._store().create_thread(metadata=thread_metadata(session))
        logger.info("Created Foundry thread %s for session %s", thread_id, session.session_key)
        return thread_id

    async def append(self, *, remote_id: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        store = self._store(thread_api_of(remote_id))
        return await store.append_messages(thread_id=remote_id, messages=messages)

    async def load(self, *, remote_id: str) -> list[RemoteMessage]:
        messages = await self._store(thread_api_of(remote_id)).load_messages(thread_id=remote_id)
        logger.info("Loaded context from Foundry thread %s: %d messages", remote_id, len(messages))
        return messages

    async def load_recent(self, *, remote_id: str, at_least: int) -> RecentMessages:
        store = self._store(thread_api_of(remote_id))
        recent = await store.load_recent_messages(thread_id=remote_id, at_least=at_least)
        logger.info(
            "Loaded context from Foundry thread %s: %d messages%s",
            remote_id,
            len(recent.messages),
            "" if recent.complete else " (the newest; the older ones load in the background)",
        )
        return recent

    async def delete_remote(self, *, remote_id: str) -> None:
        await self._store(thread_api_of(remote_id)).delete_thread(thread_id=remote_id)
        logger.info("Deleted Foundry thread %s", remote_id)

    async def aclose(self) -> None:
        for store in self._stores.pop(asyncio.get_running_loop(), {}).values():
            await store.aclose()

    def warm_up(self) -> None:
        # The SDK's imports and its first client take about 0.2 s (1-2 s for the conversations
        # API, which imports openai): a first history import would wait for them.
        async def first_client() -> None:
            await thread_store(self.config).aclose()

        asyncio.run(first_client())
