"""The Community Edition v2 routes that zep-python 2.0.2 calls for users, sessions and memory.

Ids are client-chosen (`user_id`, `session_id`). Behaviour follows the Community Edition server:
a duplicate or a session for an unknown user is a 400, and adding memory to an unknown session
creates that session (without a user) instead of failing. Reads of an unknown session are 404.
"""

from aiohttp import web

from .common import COMMUNITY_ROOT, json_body, optional_object, optional_string, store_of
from .store import ZepStore
from .wire import (
    ApiError,
    JsonObject,
    community_message,
    community_message_page,
    community_session,
    community_user,
    parse_community_messages,
    parse_community_page_request,
    parse_lastn,
)

_OK = {"message": "OK"}


def add_community_routes(router: web.UrlDispatcher) -> None:
    """Register the v2 routes under `/api/v2`."""
    router.add_post(f"{COMMUNITY_ROOT}/users", _add_user)
    router.add_get(f"{COMMUNITY_ROOT}/users/{{user_id}}", _get_user)
    router.add_delete(f"{COMMUNITY_ROOT}/users/{{user_id}}", _delete_user)
    router.add_post(f"{COMMUNITY_ROOT}/sessions", _add_session)
    router.add_get(f"{COMMUNITY_ROOT}/sessions/{{session_id}}", _get_session)
    router.add_post(f"{COMMUNITY_ROOT}/sessions/{{session_id}}/memory", _add_memory)
    router.add_get(f"{COMMUNITY_ROOT}/sessions/{{session_id}}/memory", _get_memory)
    router.add_delete(f"{COMMUNITY_ROOT}/sessions/{{session_id}}/memory", _delete_memory)
    router.add_get(f"{COMMUNITY_ROOT}/sessions/{{session_id}}/messages", _get_messages)


async def _add_user(request: web.Request) -> web.Response:
    body = await json_body(request)
    user_id = optional_string(body, "user_id")
    if not user_id:
        raise ApiError(400, "user_id is required.")
    try:
        user = store_of(request).create_user(
            user_id=user_id,
            email=optional_string(body, "email"),
            first_name=optional_string(body, "first_name"),
            last_name=optional_string(body, "last_name"),
            metadata=optional_object(body, "metadata"),
        )
    except ApiError as exc:
        raise _conflict_as_bad_request(exc) from None
    return web.json_response(community_user(user), status=201)


async def _get_user(request: web.Request) -> web.Response:
    return web.json_response(
        community_user(_user(store_of(request), request.match_info["user_id"]))
    )


async def _delete_user(request: web.Request) -> web.Response:
    store = store_of(request)
    store.delete_user(_user(store, request.match_info["user_id"])["uuid"])
    return web.json_response(_OK)


async def _add_session(request: web.Request) -> web.Response:
    body = await json_body(request)
    session_id = optional_string(body, "session_id")
    if not session_id:
        raise ApiError(400, "sessionID cannot be empty")
    user_id = optional_string(body, "user_id")
    store = store_of(request)
    user_uuid = None
    if user_id is not None:
        user = store.find_user(user_id)
        if user is None:
            raise ApiError(400, f"user does not exist with user_id: {user_id}")
        user_uuid = user["uuid"]
    try:
        thread = store.create_thread(
            user_uuid=user_uuid, session_id=session_id, metadata=optional_object(body, "metadata")
        )
    except ApiError as exc:
        raise _conflict_as_bad_request(exc) from None
    return web.json_response(community_session(thread, user_id=user_id), status=201)


async def _get_session(request: web.Request) -> web.Response:
    store = store_of(request)
    thread = _session(store, request.match_info["session_id"])
    return web.json_response(_session_object(store, thread))


async def _add_memory(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    messages = parse_community_messages(await json_body(request))
    store = store_of(request)
    thread = store.find_session(session_id) or store.create_thread(
        user_uuid=None, session_id=session_id
    )
    store.add_messages(thread["uuid"], messages)
    return web.json_response(_OK, status=201)


async def _get_memory(request: web.Request) -> web.Response:
    store = store_of(request)
    thread = _session(store, request.match_info["session_id"])
    lastn = parse_lastn(request.query)
    recent = store.messages(thread["uuid"])[-lastn:]
    return web.json_response(
        {
            "messages": [community_message(message) for message in recent],
            "relevant_facts": [],
            "facts": [],
            "summary": None,
            "metadata": {},
        }
    )


async def _delete_memory(request: web.Request) -> web.Response:
    store = store_of(request)
    store.delete_thread(_session(store, request.match_info["session_id"])["uuid"])
    return web.json_response(_OK)


async def _get_messages(request: web.Request) -> web.Response:
    store = store_of(request)
    thread = _session(store, request.match_info["session_id"])
    page = parse_community_page_request(request.query)
    return web.json_response(community_message_page(store.messages(thread["uuid"]), page))


def _user(store: ZepStore, user_id: str) -> JsonObject:
    user = store.find_user(user_id)
    if user is None:
        raise ApiError(404, f"not found: user {user_id}")
    return user


def _session(store: ZepStore, session_id: str) -> JsonObject:
    thread = store.find_session(session_id)
    if thread is None:
        raise ApiError(404, f"not found: session {session_id}")
    return thread


def _session_object(store: ZepStore, thread: JsonObject) -> JsonObject:
    user_uuid = thread["user_uuid"]
    user_id = store.get_user(user_uuid)["user_id"] if user_uuid is not None else None
    return community_session(thread, user_id=user_id)


def _conflict_as_bad_request(error: ApiError) -> ApiError:
    # The Community Edition answers a duplicate id with 400, where v4 answers 409.
    return ApiError(400, error.message) if error.status == 409 else error
