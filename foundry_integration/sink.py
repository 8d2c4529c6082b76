"""The Foundry sink: mirrors every session to an Azure AI Foundry thread while USE_FOUNDRY_THREADS
is on and the connection is configured."""

import asyncio
import logging
import weakref
from collections.abc import Sequence

from foundry_integration.config import FoundryConfig
from foundry_integration.flag import foundry_threads_enabled
from foundry_integration.threads import ThreadStore, thread_metadata
from sessions_app.sinks import OutgoingMessage, RemoteMessage, SessionInfo, Sink, SinkStatus

logger = logging.getLogger(__name__)


def thread_store(config: FoundryConfig) -> ThreadStore:
    """The adapter for the configured FOUNDRY_THREAD_API."""
    from foundry_integration.agents_store import AgentsThreadStore
    from foundry_integration.client import agents_client

    return AgentsThreadStore(*agents_client(config))


class FoundrySink(Sink):
    name = "foundry"
    label = "Foundry"
    session_field = "foundry_thread_id"

    def __init__(self) -> None:
        self.config = FoundryConfig.from_settings()
        self._warned = False
        # SDK clients belong to the event loop they were made on.
        self._stores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ThreadStore] = (
            weakref.WeakKeyDictionary()
        )

    def status(self) -> SinkStatus:
        if not foundry_threads_enabled():
            return SinkStatus(False, "USE_FOUNDRY_THREADS is off")
        problem = self.config.problem()
        if problem:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "USE_FOUNDRY_THREADS is on but %s: running on local storage only", problem
                )
            return SinkStatus(False, problem)
        return SinkStatus(True, "")

    def _store(self) -> ThreadStore:
        loop = asyncio.get_running_loop()
        store = self._stores.get(loop)
        if store is None:
            store = self._stores[loop] = thread_store(self.config)
        return store

    async def create_remote(self, *, session: SessionInfo) -> str:
        thread_id = await self._store().create_thread(metadata=thread_metadata(session))
        logger.info("Created Foundry thread %s for session %s", thread_id, session.session_key)
        return thread_id

    async def append(self, *, remote_id: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        return await self._store().append_messages(thread_id=remote_id, messages=messages)

    async def load(self, *, remote_id: str) -> list[RemoteMessage]:
        messages = await self._store().load_messages(thread_id=remote_id)
        logger.info("Loaded context from Foundry thread %s: %d messages", remote_id, len(messages))
        return messages

    async def delete_remote(self, *, remote_id: str) -> None:
        await self._store().delete_thread(thread_id=remote_id)
        logger.info("Deleted Foundry thread %s", remote_id)

    async def aclose(self) -> None:
        store = self._stores.pop(asyncio.get_running_loop(), None)
        if store is not None:
            await store.aclose()
