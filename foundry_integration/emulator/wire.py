"""Wire shapes of both Foundry APIs the emulator serves: objects, errors, validation and paging.

The classic Agent Service threads API (`azure.ai.agents`) and the new Foundry conversations API
(the OpenAI v1 surface that `azure.ai.projects` 2.x hands out through `get_openai_client()`)
share the error envelope, the metadata limits and the list page. Everything here is pure (no I/O,
no state) so the store and the HTTP handlers share one definition of what the service accepts and
returns.
"""

import secrets
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

JsonObject = dict[str, Any]

METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX_CHARS = 64
METADATA_VALUE_MAX_CHARS = 512
PAGE_LIMIT_DEFAULT = 20
PAGE_LIMIT_MAX = 100
MESSAGE_ROLES = ("user", "assistant")
CONVERSATION_ROLES = ("user", "assistant", "system", "developer")
ITEMS_PER_REQUEST_MAX = 20

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_RANDOM_CHARS = 24


class ApiError(Exception):
    """A request the service refuses; answered with `status` and the service's error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(message: str) -> JsonObject:
    """The error envelope of both APIs (azure-ai-agents' `AgentV1Error`, openai's `APIError`)."""
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }


def new_id(prefix: str) -> str:
    """A service-style id: `<prefix>_` followed by 24 random letters and digits."""
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_RANDOM_CHARS))
    return f"{prefix}_{suffix}"


def now_unix() -> int:
    """Current time in whole Unix seconds, the unit of every `created_at` on the wire."""
    return int(time.time())


def thread_object(
    *, thread_id: str, created_at: int, metadata: Mapping[str, str], tool_resources: JsonObject
) -> JsonObject:
    """A `thread` object exactly as the service returns it."""
    return {
        "id": thread_id,
        "object": "thread",
        "created_at": created_at,
        "metadata": dict(metadata),
        "tool_resources": tool_resources,
    }


@dataclass(frozen=True)
class MessageInput:
    """A validated message to append to a thread; `content` is already in the response form."""

    role: str
    content: list[JsonObject]
    attachments: list[Any]
    metadata: dict[str, str]


def message_object(
    *, message_id: str, thread_id: str, created_at: int, message: MessageInput
) -> JsonObject:
    """A `thread.message` object exactly as the service returns it."""
    return {
        "id": message_id,
        "object": "thread.message",
        "created_at": created_at,
        "thread_id": thread_id,
        "status": "completed",
        "role": message.role,
        "content": message.content,
        "assistant_id": None,
        "run_id": None,
        "attachments": message.attachments,
        "metadata": message.metadata,
    }


def parse_metadata(value: object, *, param: str = "metadata") -> dict[str, str]:
    """Validate a metadata dict against the service limits; `None` means empty.

    Raises ApiError(400) naming `param` when there are more than 16 pairs, a key longer than 64
    characters, or a value that is not a string of at most 512 characters.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"Invalid '{param}': expected an object of string values.")
    if len(value) > METADATA_MAX_PAIRS:
        raise ApiError(
            400,
            f"Invalid '{param}': too many properties. Expected an object with at most "
            f"{METADATA_MAX_PAIRS} properties, but got an object with {len(value)} properties.",
        )
    for key, item in value.items():
        if len(key) > METADATA_KEY_MAX_CHARS:
            raise ApiError(
                400,
                f"Invalid '{param}': key too long. Expected keys of at most "
                f"{METADATA_KEY_MAX_CHARS} characters, but got a key of {len(key)} characters.",
            )
        if not isinstance(item, str):
            raise ApiError(
                400, f"Invalid '{param}.{key}': expected a string, but got {type(item).__name__}."
            )
        if len(item) > METADATA_VALUE_MAX_CHARS:
            raise ApiError(
                400,
                f"Invalid '{param}.{key}': string too long. Expected a string with maximum length "
                f"{METADATA_VALUE_MAX_CHARS}, but got a string with length {len(item)}.",
            )
    return dict(value)


def parse_tool_resources(value: object) -> JsonObject:
    """Accept `tool_resources` as an opaque object (the emulator runs no tools); `None` is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "Invalid 'tool_resources': expected an object.")
    return value


def parse_message_input(body: object, *, param: str = "") -> MessageInput:
    """Validate a message request body (`role`, `content`, `attachments`?, `metadata`?).

    `content` is a non-empty string or the SDK's list of input blocks (`{"type": "text", "text":
    str}`, `image_file`, `image_url`); both become the response's list of content parts.
    `param` prefixes field names in error messages (e.g. `messages[3].`).
    """
    if not isinstance(body, dict):
        raise ApiError(400, f"Invalid '{param or 'body'}': expected an object.")
    role = body.get("role")
    if role is None:
        raise ApiError(400, f"Missing required parameter: '{param}role'.")
    if role not in MESSAGE_ROLES:
        raise ApiError(
            400, f"Invalid '{param}role': expected one of 'user', 'assistant', but got {role!r}."
        )
    attachments = body.get("attachments")
    if attachments is None:
        attachments = []
    if not isinstance(attachments, list):
        raise ApiError(400, f"Invalid '{param}attachments': expected an array.")
    return MessageInput(
        role=role,
        content=_parse_content(body.get("content"), param=f"{param}content"),
        attachments=attachments,
        metadata=parse_metadata(body.get("metadata"), param=f"{param}metadata"),
    )


def _parse_content(content: object, *, param: str) -> list[JsonObject]:
    if content is None:
        raise ApiError(400, f"Missing required parameter: '{param}'.")
    if isinstance(content, str):
        return [_text_part(content, param=param)]
    if not isinstance(content, list) or not content:
        raise ApiError(400, f"Invalid '{param}': expected a non-empty string or array of blocks.")
    return [_content_part(block, param=f"{param}[{index}]") for index, block in enumerate(content)]


def _text_part(text: str, *, param: str) -> JsonObject:
    if not text:
        # The service rejects empty text rather than storing a blank turn.
        raise ApiError(400, f"Invalid '{param}': string too short. Expected at least 1 character.")
    return {"type": "text", "text": {"value": text, "annotations": []}}


def _content_part(block: object, *, param: str) -> JsonObject:
    if not isinstance(block, dict):
        raise ApiError(400, f"Invalid '{param}': expected an object.")
    block_type = block.get("type")
    if block_type == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise ApiError(400, f"Invalid '{param}.text': expected a string.")
        return _text_part(text, param=f"{param}.text")
    if block_type in ("image_file", "image_url"):
        # Image parts come back in the same shape they were sent in.
        if not isinstance(block.get(block_type), dict):
            raise ApiError(400, f"Invalid '{param}.{block_type}': expected an object.")
        return {"type": block_type, block_type: block[block_type]}
    raise ApiError(
        400,
        f"Invalid '{param}.type': expected 'text', 'image_file' or 'image_url', "
        f"but got {block_type!r}.",
    )


def conversation_object(
    *, conversation_id: str, created_at: int, metadata: Mapping[str, str]
) -> JsonObject:
    """A `conversation` object exactly as the service returns it."""
    return {
        "id": conversation_id,
        "object": "conversation",
        "created_at": created_at,
        "metadata": dict(metadata),
    }


@dataclass(frozen=True)
class ItemInput:
    """A validated message item to add to a conversation; `content` is in the response form."""

    role: str
    content: list[JsonObject]


def message_item_object(*, item_id: str, item: ItemInput) -> JsonObject:
    """A conversation `message` item exactly as the service returns it (openai's `Message`)."""
    return {
        "id": item_id,
        "type": "message",
        "role": item.role,
        "status": "completed",
        "content": item.content,
    }


def item_list_object(items: Sequence[JsonObject]) -> JsonObject:
    """The `list` answering an items create: the new items, in order, on one page."""
    return {
        "object": "list",
        "data": list(items),
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }


def parse_item_inputs(value: object, *, param: str = "items", required: bool) -> list[ItemInput]:
    """Validate an `items` array: at most 20 message items, and at least one when `required`.

    `None` counts as an empty array. Raises ApiError(400) naming the first offending field.
    """
    if value is None:
        value = []
    if not isinstance(value, list):
        raise ApiError(400, f"Invalid '{param}': expected an array.")
    if required and not value:
        raise ApiError(
            400,
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
        )
    if len(value) > ITEMS_PER_REQUEST_MAX:
        raise ApiError(
            400,
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{ITEMS_PER_REQUEST_MAX}, but got an array with length {len(value)} instead.",
        )
    return [_parse_item_input(raw, param=f"{param}[{index}]") for index, raw in enumerate(value)]


def _parse_item_input(body: object, *, param: str) -> ItemInput:
    # Only message items: the emulator runs no model and no tools, so it has no calls or outputs.
    if not isinstance(body, dict):
        raise ApiError(400, f"Invalid '{param}': expected an object.")
    item_type = body.get("type", "message")
    if item_type != "message":
        raise ApiError(
            400,
            f"Invalid '{param}.type': the Foundry emulator stores 'message' items only, "
            f"but got {item_type!r}.",
        )
    role = body.get("role")
    if role is None:
        raise ApiError(400, f"Missing required parameter: '{param}.role'.")
    if role not in CONVERSATION_ROLES:
        raise ApiError(
            400,
            f"Invalid '{param}.role': expected one of 'user', 'assistant', 'system', 'developer', "
            f"but got {role!r}.",
        )
    return ItemInput(
        role=role, content=_parse_item_content(body.get("content"), role=role, param=param)
    )


def _parse_item_content(content: object, *, role: str, param: str) -> list[JsonObject]:
    param = f"{param}.content"
    if content is None:
        raise ApiError(400, f"Missing required parameter: '{param}'.")
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        return [_item_text_part(text_type, content, param=param)]
    if not isinstance(content, list) or not content:
        raise ApiError(400, f"Invalid '{param}': expected a non-empty string or array of parts.")
    return [
        _item_content_part(part, role=role, param=f"{param}[{index}]")
        for index, part in enumerate(content)
    ]


# Assistant turns were produced by the model, so their parts are outputs; every other role's
# parts are inputs. OpenAI refuses input parts in an assistant message; the emulator holds both
# directions to that split so a mislabelled part fails here rather than against the service.
_ASSISTANT_PART_TYPES = ("output_text", "refusal")
_INPUT_PART_TYPES = ("input_text", "input_image", "input_file")


def _item_content_part(part: object, *, role: str, param: str) -> JsonObject:
    if not isinstance(part, dict):
        raise ApiError(400, f"Invalid '{param}': expected an object.")
    allowed = _ASSISTANT_PART_TYPES if role == "assistant" else _INPUT_PART_TYPES
    part_type = part.get("type")
    if part_type not in allowed:
        expected = ", ".join(repr(name) for name in allowed)
        raise ApiError(
            400,
            f"Invalid '{param}.type': expected one of {expected} for a {role!r} message, "
            f"but got {part_type!r}.",
        )
    if part_type in ("input_text", "output_text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise ApiError(400, f"Invalid '{param}.text': expected a string.")
        return _item_text_part(part_type, text, param=f"{param}.text")
    if part_type == "refusal":
        if not isinstance(part.get("refusal"), str):
            raise ApiError(400, f"Invalid '{param}.refusal': expected a string.")
        return {"type": "refusal", "refusal": part["refusal"]}
    # Images and files are referenced, never fetched: they come back as they were sent.
    return dict(part)


def _item_text_part(part_type: str, text: str, *, param: str) -> JsonObject:
    if not text:
        # Same rule as thread messages: a blank turn is a caller bug worth surfacing.
        raise ApiError(400, f"Invalid '{param}': string too short. Expected at least 1 character.")
    if part_type == "output_text":
        return {"type": "output_text", "text": text, "annotations": []}
    return {"type": "input_text", "text": text}


@dataclass(frozen=True)
class PageRequest:
    """A validated `limit`/`order`/`after`/`before` list query."""

    limit: int
    order: Literal["asc", "desc"]
    after: str | None
    before: str | None


def parse_page_request(query: Mapping[str, str]) -> PageRequest:
    """Validate list query parameters: limit 1..100 (default 20), order asc|desc (default desc)."""
    raw_limit = query.get("limit")
    if raw_limit is None:
        limit = PAGE_LIMIT_DEFAULT
    else:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise ApiError(
                400, f"Invalid 'limit': expected an integer, got {raw_limit!r}."
            ) from None
        if not 1 <= limit <= PAGE_LIMIT_MAX:
            raise ApiError(
                400,
                f"Invalid 'limit': expected a value between 1 and {PAGE_LIMIT_MAX}, got {limit}.",
            )
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"Invalid 'order': expected 'asc' or 'desc', got {order!r}.")
    return PageRequest(
        limit=limit, order=order, after=query.get("after"), before=query.get("before")
    )


def list_page(items_oldest_first: Sequence[JsonObject], page: PageRequest) -> JsonObject:
    """One `list` page of `items_oldest_first` (insertion order) for `page`.

    The window is the items strictly between the `after` and `before` cursors in the requested
    order; the page is its first `limit` items. An empty page has `first_id` and `last_id` null,
    which is what stops the azure-ai-agents SDK: it ignores `has_more` and keeps paging while
    `last_id` is set. The openai SDK stops on `has_more: false` instead. An unknown cursor is a 400.
    """
    ordered = list(items_oldest_first)
    if page.order == "desc":
        ordered.reverse()
    ids = [item["id"] for item in ordered]
    start = _cursor_position(ids, page.after, param="after") + 1 if page.after else 0
    end = _cursor_position(ids, page.before, param="before") if page.before else len(ordered)
    window = ordered[start:end]
    data = window[: page.limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(window) > len(data),
    }


def _cursor_position(ids: list[str], cursor: str, *, param: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise ApiError(
            400, f"Invalid '{param}': no object with id {cursor!r} in this list."
        ) from None
