"""The emulator's data, kept per project, in memory or in a JSON file.

Threads and their messages (the classic Agents API) and conversations and their items (the new
Foundry conversations API) live side by side in one store and one file.

With a `path`, the whole store is rewritten atomically (temporary file + `os.replace`) after every
mutation, so a killed emulator never leaves a half-written file and a restart finds every
acknowledged write.
"""

import threading
from dataclasses import dataclass, field
from pathlib import Path

from .kit import load_store_file, save_store_file
from .wire import (
    ApiError,
    ItemInput,
    JsonObject,
    MessageInput,
    PageRequest,
    conversation_object,
    list_page,
    message_item_object,
    message_object,
    new_id,
    now_unix,
    thread_object,
)

_FILE_FORMAT = "foundry-emulator-store"
# Conversations were added as an optional top-level key, so files written before them still load.
_FILE_VERSION = 1


@dataclass
class _ThreadRecord:
    """A thread and its messages; list position is the insertion order (never `created_at`)."""

    thread: JsonObject
    messages: list[JsonObject] = field(default_factory=list)


@dataclass
class _ConversationRecord:
    """A conversation and its items; list position is the insertion order."""

    conversation: JsonObject
    items: list[JsonObject] = field(default_factory=list)


class ThreadStore:
    """Threads with their messages and conversations with their items, per project.

    Every method is safe to call from any thread. Returned objects are the stored wire objects:
    serialize them, do not mutate them.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._projects: dict[str, dict[str, _ThreadRecord]] = {}
        self._conversations: dict[str, dict[str, _ConversationRecord]] = {}
        if path is not None and path.exists():
            self._projects, self._conversations = _load(path)

    def create_thread(
        self,
        project: str,
        *,
        metadata: dict[str, str],
        tool_resources: JsonObject,
        messages: list[MessageInput],
    ) -> JsonObject:
        """Create a thread holding `messages` in the given order and return the thread object."""
        created_at = now_unix()
        thread_id = new_id("thread")
        record = _ThreadRecord(
            thread=thread_object(
                thread_id=thread_id,
                created_at=created_at,
                metadata=metadata,
                tool_resources=tool_resources,
            )
        )
        for message in messages:
            record.messages.append(_new_message(thread_id, created_at, message))
        with self._lock:
            self._projects.setdefault(project, {})[thread_id] = record
            self._save()
        return record.thread

    def get_thread(self, project: str, thread_id: str) -> JsonObject:
        """The thread object; ApiError(404) if the project has no such thread."""
        with self._lock:
            return self._record(project, thread_id).thread

    def update_thread(
        self,
        project: str,
        thread_id: str,
        *,
        metadata: dict[str, str] | None,
        tool_resources: JsonObject | None,
    ) -> JsonObject:
        """Replace whichever of `metadata` / `tool_resources` is not None; return the thread."""
        with self._lock:
            thread = self._record(project, thread_id).thread
            if metadata is not None:
                thread["metadata"] = metadata
            if tool_resources is not None:
                thread["tool_resources"] = tool_resources
            self._save()
            return thread

    def delete_thread(self, project: str, thread_id: str) -> None:
        """Delete the thread and its messages; ApiError(404) if there is no such thread."""
        with self._lock:
            self._record(project, thread_id)
            del self._projects[project][thread_id]
            self._save()

    def create_message(self, project: str, thread_id: str, message: MessageInput) -> JsonObject:
        """Append `message` to the thread and return the message object."""
        with self._lock:
            record = self._record(project, thread_id)
            created = _new_message(thread_id, now_unix(), message)
            record.messages.append(created)
            self._save()
            return created

    def list_messages(self, project: str, thread_id: str, page: PageRequest) -> JsonObject:
        """One `list` page of the thread's messages (see `wire.list_page`)."""
        with self._lock:
            return list_page(self._record(project, thread_id).messages, page)

    def remove_thread_anywhere(self, thread_id: str) -> bool:
        """Delete a thread whatever its project (out-of-band loss); False if it did not exist."""
        with self._lock:
            for threads in self._projects.values():
                if threads.pop(thread_id, None) is not None:
                    self._save()
                    return True
            return False

    def messages_anywhere(self, thread_id: str) -> list[JsonObject] | None:
        """All messages of a thread, oldest first, whatever its project; None if unknown."""
        with self._lock:
            for threads in self._projects.values():
                if thread_id in threads:
                    return list(threads[thread_id].messages)
            return None

    def counts(self) -> tuple[int, int]:
        """(threads, messages) across all projects."""
        with self._lock:
            records = [record for threads in self._projects.values() for record in threads.values()]
            return len(records), sum(len(record.messages) for record in records)

    def create_conversation(
        self, project: str, *, metadata: dict[str, str], items: list[ItemInput]
    ) -> JsonObject:
        """Create a conversation holding `items` in the given order; return the conversation."""
        conversation_id = new_id("conv")
        record = _ConversationRecord(
            conversation=conversation_object(
                conversation_id=conversation_id, created_at=now_unix(), metadata=metadata
            ),
            items=[_new_item(item) for item in items],
        )
        with self._lock:
            self._conversations.setdefault(project, {})[conversation_id] = record
            self._save()
        return record.conversation

    def get_conversation(self, project: str, conversation_id: str) -> JsonObject:
        """The conversation object; ApiError(404) if the project has no such conversation."""
        with self._lock:
            return self._conversation_record(project, conversation_id).conversation

    def update_conversation(
        self, project: str, conversation_id: str, *, metadata: dict[str, str]
    ) -> JsonObject:
        """Replace the conversation's metadata (no merge) and return the conversation."""
        with self._lock:
            conversation = self._conversation_record(project, conversation_id).conversation
            conversation["metadata"] = metadata
            self._save()
            return conversation

    def delete_conversation(self, project: str, conversation_id: str) -> None:
        """Delete the conversation and its items; ApiError(404) if there is no such conversation."""
        with self._lock:
            self._conversation_record(project, conversation_id)
            del self._conversations[project][conversation_id]
            self._save()

    def create_items(
        self, project: str, conversation_id: str, items: list[ItemInput]
    ) -> list[JsonObject]:
        """Append all of `items`, in order, in one write; return the new item objects."""
        with self._lock:
            record = self._conversation_record(project, conversation_id)
            created = [_new_item(item) for item in items]
            record.items.extend(created)
            self._save()
            return created

    def list_items(self, project: str, conversation_id: str, page: PageRequest) -> JsonObject:
        """One `list` page of the conversation's items (see `wire.list_page`)."""
        with self._lock:
            return list_page(self._conversation_record(project, conversation_id).items, page)

    def get_item(self, project: str, conversation_id: str, item_id: str) -> JsonObject:
        """One item of the conversation; ApiError(404) for an unknown conversation or item."""
        with self._lock:
            record = self._conversation_record(project, conversation_id)
            return record.items[_item_position(record, item_id)]

    def delete_item(self, project: str, conversation_id: str, item_id: str) -> JsonObject:
        """Remove one item and return the conversation (what the service answers)."""
        with self._lock:
            record = self._conversation_record(project, conversation_id)
            del record.items[_item_position(record, item_id)]
            self._save()
            return record.conversation

    def remove_conversation_anywhere(self, conversation_id: str) -> bool:
        """Delete a conversation whatever its project (out-of-band loss); False if unknown."""
        with self._lock:
            for conversations in self._conversations.values():
                if conversations.pop(conversation_id, None) is not None:
                    self._save()
                    return True
            return False

    def items_anywhere(self, conversation_id: str) -> list[JsonObject] | None:
        """All items of a conversation, oldest first, whatever its project; None if unknown."""
        with self._lock:
            for conversations in self._conversations.values():
                if conversation_id in conversations:
                    return list(conversations[conversation_id].items)
            return None

    def conversation_counts(self) -> tuple[int, int]:
        """(conversations, items) across all projects."""
        with self._lock:
            records = [
                record
                for conversations in self._conversations.values()
                for record in conversations.values()
            ]
            return len(records), sum(len(record.items) for record in records)

    def clear(self) -> None:
        """Forget every project with its threads and conversations (and persist the empty store)."""
        with self._lock:
            self._projects = {}
            self._conversations = {}
            self._save()

    def _record(self, project: str, thread_id: str) -> _ThreadRecord:
        record = self._projects.get(project, {}).get(thread_id)
        if record is None:
            raise ApiError(404, f"No thread found with id '{thread_id}'.")
        return record

    def _conversation_record(self, project: str, conversation_id: str) -> _ConversationRecord:
        record = self._conversations.get(project, {}).get(conversation_id)
        if record is None:
            raise ApiError(404, f"Conversation with id '{conversation_id}' not found.")
        return record

    def _save(self) -> None:
        if self.path is None:
            return
        sections = {
            "projects": {
                project: {
                    thread_id: {"thread": record.thread, "messages": record.messages}
                    for thread_id, record in threads.items()
                }
                for project, threads in self._projects.items()
            },
            "conversations": {
                project: {
                    conversation_id: {"conversation": record.conversation, "items": record.items}
                    for conversation_id, record in conversations.items()
                }
                for project, conversations in self._conversations.items()
            },
        }
        save_store_file(
            self.path, file_format=_FILE_FORMAT, version=_FILE_VERSION, sections=sections
        )


def _new_message(thread_id: str, created_at: int, message: MessageInput) -> JsonObject:
    return message_object(
        message_id=new_id("msg"), thread_id=thread_id, created_at=created_at, message=message
    )


def _new_item(item: ItemInput) -> JsonObject:
    return message_item_object(item_id=new_id("msg"), item=item)


def _item_position(record: _ConversationRecord, item_id: str) -> int:
    for position, item in enumerate(record.items):
        if item["id"] == item_id:
            return position
    raise ApiError(404, f"Item with id '{item_id}' not found.")


def _load(
    path: Path,
) -> tuple[dict[str, dict[str, _ThreadRecord]], dict[str, dict[str, _ConversationRecord]]]:
    document = load_store_file(
        path, file_format=_FILE_FORMAT, version=_FILE_VERSION, name="Foundry emulator store"
    )
    threads = {
        project: {
            thread_id: _ThreadRecord(thread=entry["thread"], messages=entry["messages"])
            for thread_id, entry in project_threads.items()
        }
        for project, project_threads in document["projects"].items()
    }
    conversations = {
        project: {
            conversation_id: _ConversationRecord(
                conversation=entry["conversation"], items=entry["items"]
            )
            for conversation_id, entry in project_conversations.items()
        }
        for project, project_conversations in document.get("conversations", {}).items()
    }
    return threads, conversations
