"""The emulator's users, threads, messages, tasks and idempotency records, shared by both APIs.

One thread record serves both surfaces: v4 addresses it by its server-assigned `uuid`, v2 by the
client-chosen `session_id` (set only for sessions created through v2, and shown as the v4
`thread_id`). Messages keep insertion order with a per-thread number `seq` (1, 2, ...).

With a `path`, the whole store is rewritten atomically (temporary file + `os.replace`) after every
mutation, so a killed emulator never leaves a half-written file and a restart finds every
acknowledged write, idempotency records included.
"""

import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from foundry_integration.emulator.kit import load_store_file, save_store_file

from .wire import ApiError, JsonObject, MessageInput, new_uuid, now_iso, stored_message

_FILE_FORMAT = "zep-emulator-store"
_FILE_VERSION = 1
# Oldest records are forgotten first; real services keep keys for about a day.
IDEMPOTENCY_RECORDS_MAX = 10_000


@dataclass(frozen=True)
class StoredResponse:
    """The first answer to an idempotent request, replayed for every repeat of its key."""

    status: int
    body: str
    content_type: str


@dataclass
class _IdempotencyRecord:
    fingerprint: str
    response: StoredResponse


class ZepStore:
    """Users, threads, messages, tasks and idempotency records; safe to call from any thread.

    Returned objects are the stored records (or copies of message lists): serialize them, do not
    mutate them.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._users: dict[str, JsonObject] = {}
        self._threads: dict[str, JsonObject] = {}
        self._tasks: dict[str, JsonObject] = {}
        self._idempotency: dict[str, _IdempotencyRecord] = {}
        if path is not None and path.exists():
            self._load(path)

    # --- users ---------------------------------------------------------------------------

    def create_user(
        self,
        *,
        user_id: str | None,
        email: str | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
        metadata: JsonObject | None = None,
        time_zone: str | None = None,
        disable_default_ontology: bool | None = None,
    ) -> JsonObject:
        """Create a user with a new uuid and graph_uuid; ApiError(409) if `user_id` is taken."""
        with self._lock:
            if user_id is not None and self.find_user(user_id) is not None:
                raise ApiError(
                    409, f"A user with user_id '{user_id}' already exists.", param="user_id"
                )
            user = {
                "uuid": new_uuid(),
                "user_id": user_id,
                "email": email,
                "first_name": first_name,
                "last_name": last_name,
                "metadata": metadata,
                "time_zone": time_zone,
                "disable_default_ontology": disable_default_ontology,
                "graph_uuid": new_uuid(),
                "created_at": now_iso(),
            }
            self._users[user["uuid"]] = user
            self._save()
            return user

    def get_user(self, user_uuid: str) -> JsonObject:
        """The user; ApiError(404) if there is none with this uuid."""
        with self._lock:
            user = self._users.get(user_uuid)
            if user is None:
                raise ApiError(404, f"User '{user_uuid}' not found.")
            return user

    def find_user(self, user_id: str) -> JsonObject | None:
        """The user with the developer-assigned `user_id`, if any."""
        with self._lock:
            return next((u for u in self._users.values() if u["user_id"] == user_id), None)

    def delete_user(self, user_uuid: str) -> None:
        """Delete the user with its threads and their messages; ApiError(404) if unknown."""
        with self._lock:
            self.get_user(user_uuid)
            del self._users[user_uuid]
            for thread_uuid in [
                uuid for uuid, thread in self._threads.items() if thread["user_uuid"] == user_uuid
            ]:
                del self._threads[thread_uuid]
            self._save()

    # --- threads and messages ------------------------------------------------------------

    def create_thread(
        self,
        *,
        user_uuid: str | None,
        session_id: str | None = None,
        metadata: JsonObject | None = None,
    ) -> JsonObject:
        """Create an empty thread with a new uuid; ApiError(404) for an unknown `user_uuid`,
        ApiError(409) if `session_id` is taken."""
        with self._lock:
            if user_uuid is not None:
                self.get_user(user_uuid)
            if session_id is not None and self.find_session(session_id) is not None:
                raise ApiError(409, f"session already exists with session_id: {session_id}")
            created_at = now_iso()
            thread = {
                "uuid": new_uuid(),
                "session_id": session_id,
                "user_uuid": user_uuid,
                "metadata": metadata,
                "created_at": created_at,
                "updated_at": created_at,
                "messages": [],
            }
            self._threads[thread["uuid"]] = thread
            self._save()
            return thread

    def get_thread(self, thread_uuid: str) -> JsonObject:
        """The thread; ApiError(404) if there is none with this uuid."""
        with self._lock:
            thread = self._threads.get(thread_uuid)
            if thread is None:
                raise ApiError(404, f"Thread '{thread_uuid}' not found.")
            return thread

    def find_session(self, session_id: str) -> JsonObject | None:
        """The thread created through v2 with this `session_id`, if any."""
        with self._lock:
            return next((t for t in self._threads.values() if t["session_id"] == session_id), None)

    def delete_thread(self, thread_uuid: str) -> None:
        """Delete the thread and its messages; ApiError(404) if unknown."""
        with self._lock:
            self.get_thread(thread_uuid)
            del self._threads[thread_uuid]
            self._save()

    def add_messages(self, thread_uuid: str, messages: list[MessageInput]) -> list[JsonObject]:
        """Append `messages` in order, numbered after the thread's last message; return them."""
        with self._lock:
            thread = self.get_thread(thread_uuid)
            added = [
                stored_message(
                    seq=len(thread["messages"]) + offset, thread_uuid=thread_uuid, message=message
                )
                for offset, message in enumerate(messages, start=1)
            ]
            thread["messages"].extend(added)
            thread["updated_at"] = added[-1]["created_at"]
            self._save()
            return added

    def messages(self, thread_uuid: str) -> list[JsonObject]:
        """All messages of the thread, oldest first; ApiError(404) if unknown."""
        with self._lock:
            return list(self.get_thread(thread_uuid)["messages"])

    def remove_thread_anywhere(self, thread_ref: str) -> bool:
        """Delete a thread by uuid or v2 session_id (out-of-band loss); False if unknown."""
        with self._lock:
            thread = self._resolve(thread_ref)
            if thread is None:
                return False
            del self._threads[thread["uuid"]]
            self._save()
            return True

    def messages_anywhere(self, thread_ref: str) -> list[JsonObject] | None:
        """All stored messages of a thread found by uuid or v2 session_id; None if unknown."""
        with self._lock:
            thread = self._resolve(thread_ref)
            return list(thread["messages"]) if thread is not None else None

    def _resolve(self, thread_ref: str) -> JsonObject | None:
        return self._threads.get(thread_ref) or self.find_session(thread_ref)

    # --- tasks ---------------------------------------------------------------------------

    def record_task(self, task: JsonObject) -> JsonObject:
        """Keep `task` so that it can be fetched by uuid; return it."""
        with self._lock:
            self._tasks[task["uuid"]] = task
            self._save()
            return task

    def get_task(self, task_uuid: str) -> JsonObject:
        """The task; ApiError(404) if unknown."""
        with self._lock:
            task = self._tasks.get(task_uuid)
            if task is None:
                raise ApiError(404, f"Task '{task_uuid}' not found.")
            return task

    # --- idempotency ---------------------------------------------------------------------

    def find_idempotent_response(self, scope: str, fingerprint: str) -> StoredResponse | None:
        """The answer kept for `scope` (method, path and key); None if the key is unused.

        Raises ApiError(400) if the key was used for a request with another body fingerprint.
        """
        with self._lock:
            record = self._idempotency.get(scope)
            if record is None:
                return None
            if record.fingerprint != fingerprint:
                raise ApiError(
                    400,
                    "This Idempotency-Key was already used with a different request body.",
                    code="idempotency_key_reused",
                )
            return record.response

    def keep_idempotent_response(
        self, scope: str, fingerprint: str, response: StoredResponse
    ) -> None:
        """Keep the first answer for `scope`, forgetting the oldest records beyond the cap."""
        with self._lock:
            self._idempotency[scope] = _IdempotencyRecord(fingerprint, response)
            while len(self._idempotency) > IDEMPOTENCY_RECORDS_MAX:
                del self._idempotency[next(iter(self._idempotency))]
            self._save()

    # --- whole store ---------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Numbers of users, threads and messages."""
        with self._lock:
            return {
                "users": len(self._users),
                "threads": len(self._threads),
                "messages": sum(len(thread["messages"]) for thread in self._threads.values()),
            }

    def clear(self) -> None:
        """Forget every user, thread, message, task and idempotency record (and persist that)."""
        with self._lock:
            self._users = {}
            self._threads = {}
            self._tasks = {}
            self._idempotency = {}
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        sections = {
            "users": self._users,
            "threads": self._threads,
            "tasks": self._tasks,
            "idempotency": {
                scope: {"fingerprint": record.fingerprint, "response": asdict(record.response)}
                for scope, record in self._idempotency.items()
            },
        }
        save_store_file(
            self.path, file_format=_FILE_FORMAT, version=_FILE_VERSION, sections=sections
        )

    def _load(self, path: Path) -> None:
        document = load_store_file(
            path, file_format=_FILE_FORMAT, version=_FILE_VERSION, name="Zep emulator store"
        )
        self._users = document["users"]
        self._threads = document["threads"]
        self._tasks = document["tasks"]
        self._idempotency = {
            scope: _IdempotencyRecord(entry["fingerprint"], StoredResponse(**entry["response"]))
            for scope, entry in document["idempotency"].items()
        }
