"""Wire shapes of the two Zep APIs: objects, errors, message validation and paging.

Everything here is pure (no I/O, no state), so the store and both route modules share one
definition of what the services accept and return. Stored messages are kept in one neutral form
(`StoredMessage` dicts) and rendered per API:

* Zep Cloud v4 (`zep-cloud`): `role` is the role type and `name` the sender's name.
* Community Edition v2 (`zep-python`): `role_type` is the role type and `role` the sender's name.
"""

import base64
import binascii
import datetime
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

JsonObject = dict[str, Any]

MESSAGES_PER_REQUEST_MAX = 30
MESSAGE_CONTENT_MAX_CHARS = 2500
MESSAGE_METADATA_MAX_KEYS = 10
USER_ID_MAX_CHARS = 500
CLOUD_ROLES = ("system", "assistant", "user", "function", "tool")
COMMUNITY_ROLE_TYPES = ("norole", *CLOUD_ROLES)
CLOUD_PAGE_SIZE_DEFAULT = 50
CLOUD_PAGE_SIZE_MAX = 200
COMMUNITY_PAGE_LIMIT_DEFAULT = 100
# zep-python's memory.get without lastn: the Community Edition store's minimum window.
COMMUNITY_LASTN_DEFAULT = 4
# Shown by get_context: the emulator builds no graph, so the context is the recent history.
CONTEXT_RECENT_MESSAGES = 10

_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    409: "conflict",
    500: "internal_error",
    501: "not_implemented",
}


class ApiError(Exception):
    """A request the service refuses; each API renders it in its own error body.

    `code` and `param` only reach the v4 body; `code` defaults to one derived from `status`.
    """

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code if code is not None else _DEFAULT_CODES.get(status, "error")
        self.param = param


def cloud_error_body(error: ApiError) -> JsonObject:
    """The v4 error envelope, which zep-cloud parses into `types.ApiError` / `ErrorBody`."""
    return {
        "error": {
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "details": None,
            "request_id": new_uuid(),
        }
    }


def community_error_body(error: ApiError) -> JsonObject:
    """The Community Edition error body, which zep-python parses into `types.ApiError`."""
    return {"message": error.message}


def new_uuid() -> str:
    """A random UUID in its canonical string form, the id format of both APIs."""
    return str(uuid.uuid4())


def now_iso() -> str:
    """The current UTC time as RFC 3339 with microseconds, the timestamp format of both APIs."""
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageInput:
    """A validated message to append; `role` is the role type, `name` the sender's name."""

    role: str
    name: str | None
    content: str
    metadata: JsonObject | None
    reference_time: str | None


def parse_cloud_messages(body: JsonObject) -> list[MessageInput]:
    """Validate a v4 add-messages body: 1 to 30 messages, each with a role and 1 to 2,500
    characters of content, optional name, metadata (at most 10 keys of scalars or arrays of
    scalars) and RFC 3339 `reference_time`. Raises ApiError(400) naming the bad field."""
    raw_messages = _message_list(body.get("messages"))
    ignore_roles = body.get("ignore_roles")
    if ignore_roles is not None and (
        not isinstance(ignore_roles, list) or any(role not in CLOUD_ROLES for role in ignore_roles)
    ):
        raise ApiError(
            400,
            f"ignore_roles must be a list of roles out of {list(CLOUD_ROLES)}.",
            param="ignore_roles",
        )
    return [
        _parse_cloud_message(raw, param=f"messages[{index}]")
        for index, raw in enumerate(raw_messages)
    ]


def _parse_cloud_message(raw: object, *, param: str) -> MessageInput:
    if not isinstance(raw, dict):
        raise ApiError(400, f"{param} must be an object.", param=param)
    if raw.get("uuid") is not None:
        raise ApiError(
            400, "Message identifiers are server-assigned; leave uuid unset.", param=f"{param}.uuid"
        )
    role = raw.get("role")
    if role not in CLOUD_ROLES:
        raise ApiError(
            400, f"role must be one of {list(CLOUD_ROLES)}, got {role!r}.", param=f"{param}.role"
        )
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "name must be a string.", param=f"{param}.name")
    reference_time = raw.get("reference_time")
    if reference_time is not None:
        _check_timestamp(reference_time, param=f"{param}.reference_time")
    return MessageInput(
        role=role,
        name=name,
        content=_parse_content(raw.get("content"), param=f"{param}.content", allow_empty=False),
        metadata=_parse_cloud_metadata(raw.get("metadata"), param=f"{param}.metadata"),
        reference_time=reference_time,
    )


def parse_community_messages(body: JsonObject) -> list[MessageInput]:
    """Validate a v2 add-memory body: 1 to 30 messages, each with a `role_type`, string
    `content` of at most 2,500 characters, and optional `role` (sender name) and metadata.
    Raises ApiError(400)."""
    raw_messages = _message_list(body.get("messages"))
    return [
        _parse_community_message(raw, param=f"messages[{index}]")
        for index, raw in enumerate(raw_messages)
    ]


def _parse_community_message(raw: object, *, param: str) -> MessageInput:
    if not isinstance(raw, dict):
        raise ApiError(400, f"{param} must be an object.")
    role_type = raw.get("role_type")
    if role_type is None:
        raise ApiError(400, f"{param}.role_type is required.")
    if role_type not in COMMUNITY_ROLE_TYPES:
        raise ApiError(
            400,
            f"{param}.role_type must be one of {list(COMMUNITY_ROLE_TYPES)}, got {role_type!r}.",
        )
    role = raw.get("role")
    if role is not None and not isinstance(role, str):
        raise ApiError(400, f"{param}.role must be a string.")
    metadata = raw.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ApiError(400, f"{param}.metadata must be an object.")
    return MessageInput(
        role=role_type,
        name=role or None,
        content=_parse_content(raw.get("content"), param=f"{param}.content", allow_empty=True),
        metadata=metadata,
        reference_time=None,
    )


def _message_list(raw_messages: object) -> list[Any]:
    if not isinstance(raw_messages, list) or not raw_messages:
        raise ApiError(400, "messages must be a non-empty list.", param="messages")
    if len(raw_messages) > MESSAGES_PER_REQUEST_MAX:
        raise ApiError(
            400,
            f"Too many messages: at most {MESSAGES_PER_REQUEST_MAX} messages per request, "
            f"got {len(raw_messages)}.",
            param="messages",
        )
    return raw_messages


def _parse_content(content: object, *, param: str, allow_empty: bool) -> str:
    if not isinstance(content, str) or (not content and not allow_empty):
        raise ApiError(400, f"{param} must be a non-empty string.", param=param)
    if len(content) > MESSAGE_CONTENT_MAX_CHARS:
        raise ApiError(
            400,
            f"{param} is too long: at most {MESSAGE_CONTENT_MAX_CHARS} characters, "
            f"got {len(content)}. Split longer messages.",
            param=param,
        )
    return content


def _parse_cloud_metadata(metadata: object, *, param: str) -> JsonObject | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ApiError(400, f"{param} must be an object.", param=param)
    if len(metadata) > MESSAGE_METADATA_MAX_KEYS:
        raise ApiError(
            400,
            f"{param} has {len(metadata)} keys; at most {MESSAGE_METADATA_MAX_KEYS} are allowed.",
            param=param,
        )
    for key, value in metadata.items():
        if not _is_scalar(value) and not (
            isinstance(value, list) and all(_is_scalar(item) for item in value)
        ):
            raise ApiError(
                400,
                f"{param}.{key} must be a string, number, boolean or array of scalars.",
                param=f"{param}.{key}",
            )
    return metadata


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _check_timestamp(value: object, *, param: str) -> None:
    try:
        if not isinstance(value, str):
            raise ValueError
        datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, f"{param} must be an RFC 3339 timestamp.", param=param) from None


def stored_message(*, seq: int, thread_uuid: str, message: MessageInput) -> JsonObject:
    """The neutral stored form of `message`, number `seq` (1-based) in its thread."""
    created_at = now_iso()
    return {
        "uuid": new_uuid(),
        "seq": seq,
        "thread_uuid": thread_uuid,
        "role": message.role,
        "name": message.name,
        "content": message.content,
        "metadata": message.metadata,
        "created_at": created_at,
        "reference_time": message.reference_time or created_at,
    }


# --- Zep Cloud v4 objects ------------------------------------------------------------------


def cloud_user(user: JsonObject) -> JsonObject:
    """A stored user as the v4 `User` object."""
    return {
        key: user[key]
        for key in (
            "uuid",
            "user_id",
            "email",
            "first_name",
            "last_name",
            "metadata",
            "time_zone",
            "disable_default_ontology",
            "graph_uuid",
            "created_at",
        )
    }


def cloud_thread(thread: JsonObject, *, graph_uuid: str | None) -> JsonObject:
    """A stored thread as the v4 `Thread` object; `thread_id` is set for v2-created sessions."""
    return {
        "uuid": thread["uuid"],
        "thread_id": thread["session_id"],
        "user_uuid": thread["user_uuid"],
        "graph_uuid": graph_uuid,
        "created_at": thread["created_at"],
        "updated_at": thread["updated_at"],
    }


def cloud_message(message: JsonObject) -> JsonObject:
    """A stored message as the v4 `Message` object."""
    return {
        "uuid": message["uuid"],
        "thread_uuid": message["thread_uuid"],
        "role": message["role"],
        "name": message["name"],
        "content": message["content"],
        "metadata": message["metadata"],
        "created_at": message["created_at"],
        "reference_time": message["reference_time"],
        # No graph is built, so ingestion is complete as soon as the messages are stored.
        "processed": True,
    }


def finished_task(task_type: str) -> JsonObject:
    """A v4 `Task` that already succeeded: the emulator does its asynchronous work inline."""
    now = now_iso()
    return {
        "uuid": new_uuid(),
        "type": task_type,
        "status": "succeeded",
        "created_at": now,
        "started_at": now,
        "updated_at": now,
        "completed_at": now,
    }


def cloud_context(messages: list[JsonObject]) -> str:
    """A context block for get_context: the thread's most recent messages, oldest first."""
    recent = messages[-CONTEXT_RECENT_MESSAGES:]
    lines = [
        f"{message['role']}"
        + (f" ({message['name']})" if message["name"] else "")
        + f": {message['content']}"
        for message in recent
    ]
    return "<RECENT_MESSAGES>\n" + "\n".join(lines) + "\n</RECENT_MESSAGES>"


@dataclass(frozen=True)
class CloudPageRequest:
    """A validated v4 list query: page size, direction and the position after the cursor."""

    page_size: int
    order: Literal["asc", "desc"]
    after_seq: int | None


def parse_cloud_page_request(query: Mapping[str, str]) -> CloudPageRequest:
    """Validate `page_size` (1..200, default 50), `order` (asc|desc, default asc), `order_by`
    (created_at only) and an opaque `cursor` from an earlier page in the same order."""
    page_size = _int_param(query, "page_size", CLOUD_PAGE_SIZE_DEFAULT)
    if not 1 <= page_size <= CLOUD_PAGE_SIZE_MAX:
        raise ApiError(
            400, f"page_size must be between 1 and {CLOUD_PAGE_SIZE_MAX}.", param="page_size"
        )
    order = query.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be 'asc' or 'desc'.", param="order")
    if (query.get("order_by") or "created_at") != "created_at":
        raise ApiError(400, "order_by must be 'created_at'.", param="order_by")
    cursor = query.get("cursor")
    return CloudPageRequest(
        page_size=page_size,
        order=order,
        after_seq=_decode_cursor(cursor, order=order) if cursor else None,
    )


def cloud_message_page(messages: list[JsonObject], page: CloudPageRequest) -> JsonObject:
    """One v4 `MessagePage` of a thread's messages (oldest first) for `page`.

    `next_cursor` is present only when more messages follow, so the SDK pager stops right after
    the last message; `total_size` counts the whole thread.
    """
    ordered = messages if page.order == "asc" else messages[::-1]
    if page.after_seq is not None:
        after = page.after_seq
        if page.order == "asc":
            ordered = [message for message in ordered if message["seq"] > after]
        else:
            ordered = [message for message in ordered if message["seq"] < after]
    items = ordered[: page.page_size]
    body: JsonObject = {
        "items": [cloud_message(message) for message in items],
        "total_size": len(messages),
    }
    if len(ordered) > len(items):
        body["next_cursor"] = _encode_cursor(items[-1]["seq"], order=page.order)
    return body


def _encode_cursor(seq: int, *, order: str) -> str:
    return base64.urlsafe_b64encode(f"{order}:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, *, order: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        cursor_order, _, seq = raw.partition(":")
        if cursor_order != order:
            raise ValueError
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            400, "cursor is not a cursor returned by this listing in this order.", param="cursor"
        ) from None


# --- Community Edition v2 objects ----------------------------------------------------------


def community_user(user: JsonObject) -> JsonObject:
    """A stored user as the v2 `User` object."""
    return {
        "uuid": user["uuid"],
        "user_id": user["user_id"],
        "email": user["email"],
        "first_name": user["first_name"],
        "last_name": user["last_name"],
        "metadata": user["metadata"],
        "created_at": user["created_at"],
        "updated_at": user["created_at"],
    }


def community_session(thread: JsonObject, *, user_id: str | None) -> JsonObject:
    """A stored thread as the v2 `Session` object."""
    return {
        "uuid": thread["uuid"],
        "session_id": thread["session_id"],
        "user_id": user_id,
        "metadata": thread["metadata"],
        "created_at": thread["created_at"],
        "updated_at": thread["updated_at"],
    }


def community_message(message: JsonObject) -> JsonObject:
    """A stored message as the v2 `Message` object."""
    return {
        "uuid": message["uuid"],
        "role": message["name"],
        "role_type": message["role"],
        "content": message["content"],
        "metadata": message["metadata"],
        "token_count": 0,
        "created_at": message["created_at"],
        "updated_at": message["created_at"],
    }


@dataclass(frozen=True)
class CommunityPageRequest:
    """A validated v2 message list query: `cursor` is a 1-based page number."""

    limit: int
    page_number: int


def parse_community_page_request(query: Mapping[str, str]) -> CommunityPageRequest:
    """Validate `limit` (>= 1, default 100) and `cursor` (page number >= 1, default 1).

    zep-python sends `limit=&cursor=` for unset arguments, so empty values mean absent.
    """
    limit = _int_param(query, "limit", COMMUNITY_PAGE_LIMIT_DEFAULT)
    page_number = _int_param(query, "cursor", 1)
    if limit < 1 or page_number < 1:
        raise ApiError(400, "limit and cursor must be integers >= 1.")
    return CommunityPageRequest(limit=limit, page_number=page_number)


def community_message_page(messages: list[JsonObject], page: CommunityPageRequest) -> JsonObject:
    """One v2 `MessageListResponse` page (oldest first).

    Like the Community Edition server, a page past the end is empty with `total_count` 0:
    stop paging on an empty page, not on `total_count`.
    """
    start = (page.page_number - 1) * page.limit
    items = messages[start : start + page.limit]
    return {
        "messages": [community_message(message) for message in items],
        "total_count": len(messages) if items else 0,
        "row_count": len(items),
    }


def parse_lastn(query: Mapping[str, str]) -> int:
    """`lastn` for memory.get: >= 1, default 4; empty means absent."""
    lastn = _int_param(query, "lastn", COMMUNITY_LASTN_DEFAULT)
    if lastn < 1:
        raise ApiError(400, "lastn must be an integer >= 1.")
    return lastn


def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {raw!r}.", param=name) from None
