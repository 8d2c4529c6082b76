"""The Zep Cloud v4 routes that zep-cloud 4.0.1 calls for users, threads and messages.

Ids are server-assigned UUIDs. Creates answer 201, add-messages and deletes answer 202 with a
task that has already succeeded (the emulator does the asynchronous work inline).
"""

from aiohttp import web

from .common import CLOUD_ROOT, json_body, optional_object, optional_string, store_of
from .store import ZepStore
from .wire import (
    USER_ID_MAX_CHARS,
    ApiError,
    JsonObject,
    cloud_context,
    cloud_message,
    cloud_message_page,
    cloud_thread,
    cloud_user,
    finished_task,
    parse_cloud_messages,
    parse_cloud_page_request,
)


def add_cloud_routes(router: web.UrlDispatcher) -> None:
    """Register the v4 routes under `/api/v4`."""
    router.add_post(f"{CLOUD_ROOT}/users", _create_user)
    router.add_post(f"{CLOUD_ROOT}/users/lookup", _lookup_user)
    router.add_get(f"{CLOUD_ROOT}/users/{{user_uuid}}", _get_user)
    router.add_delete(f"{CLOUD_ROOT}/users/{{user_uuid}}", _delete_user)
    router.add_post(f"{CLOUD_ROOT}/threads", _create_thread)
    router.add_post(f"{CLOUD_ROOT}/threads/lookup", _lookup_thread)
    router.add_get(f"{CLOUD_ROOT}/threads/{{thread_uuid}}", _get_thread)
    router.add_delete(f"{CLOUD_ROOT}/threads/{{thread_uuid}}", _delete_thread)
    router.add_post(f"{CLOUD_ROOT}/threads/{{thread_uuid}}/messages", _add_messages)
    router.add_get(f"{CLOUD_ROOT}/threads/{{thread_uuid}}/messages", _list_messages)
    router.add_get(f"{CLOUD_ROOT}/threads/{{thread_uuid}}/context", _get_context)
    router.add_get(f"{CLOUD_ROOT}/tasks/{{task_uuid}}", _get_task)


async def _create_user(request: web.Request) -> web.Response:
    body = await json_body(request)
    user_id = optional_string(body, "user_id")
    if user_id is not None and not 1 <= len(user_id) <= USER_ID_MAX_CHARS:
        raise ApiError(
            400, f"user_id must have 1 to {USER_ID_MAX_CHARS} characters.", param="user_id"
        )
    disable_default_ontology = body.get("disable_default_ontology")
    if disable_default_ontology is not None and not isinstance(disable_default_ontology, bool):
        raise ApiError(
            400, "disable_default_ontology must be a boolean.", param="disable_default_ontology"
        )
    user = store_of(request).create_user(
        user_id=user_id,
        email=optional_string(body, "email"),
        first_name=optional_string(body, "first_name"),
        last_name=optional_string(body, "last_name"),
        metadata=optional_object(body, "metadata"),
        time_zone=optional_string(body, "time_zone"),
        disable_default_ontology=disable_default_ontology,
    )
    return web.json_response(cloud_user(user), status=201)


async def _lookup_user(request: web.Request) -> web.Response:
    user_id = _lookup_key(await json_body(request), supported="user_id")
    user = store_of(request).find_user(user_id)
    if user is None:
        raise ApiError(404, f"No user with user_id '{user_id}'.", param="user_id")
    return web.json_response(cloud_user(user))


async def _get_user(request: web.Request) -> web.Response:
    return web.json_response(
        cloud_user(store_of(request).get_user(request.match_info["user_uuid"]))
    )


async def _delete_user(request: web.Request) -> web.Response:
    store = store_of(request)
    store.delete_user(request.match_info["user_uuid"])
    return web.json_response({"task": store.record_task(finished_task("delete_user"))}, status=202)


async def _create_thread(request: web.Request) -> web.Response:
    user_uuid = optional_string(await json_body(request), "user_uuid")
    if not user_uuid:
        raise ApiError(400, "user_uuid is required.", param="user_uuid")
    store = store_of(request)
    return web.json_response(
        _thread_object(store, store.create_thread(user_uuid=user_uuid)), status=201
    )


async def _lookup_thread(request: web.Request) -> web.Response:
    thread_id = _lookup_key(await json_body(request), supported="thread_id")
    store = store_of(request)
    thread = store.find_session(thread_id)
    if thread is None:
        raise ApiError(404, f"No thread with thread_id '{thread_id}'.", param="thread_id")
    return web.json_response(_thread_object(store, thread))


async def _get_thread(request: web.Request) -> web.Response:
    store = store_of(request)
    return web.json_response(
        _thread_object(store, store.get_thread(request.match_info["thread_uuid"]))
    )


async def _delete_thread(request: web.Request) -> web.Response:
    store = store_of(request)
    store.delete_thread(request.match_info["thread_uuid"])
    return web.json_response(
        {"task": store.record_task(finished_task("delete_thread"))}, status=202
    )


async def _add_messages(request: web.Request) -> web.Response:
    thread_uuid = request.match_info["thread_uuid"]
    store = store_of(request)
    store.get_thread(thread_uuid)  # an unknown thread is a 404 even when the body is bad
    body = await json_body(request)
    added = store.add_messages(thread_uuid, parse_cloud_messages(body))
    answer: JsonObject = {
        "messages": [cloud_message(message) for message in added],
        "task": store.record_task(finished_task("add_messages")),
    }
    if body.get("return_context") is True:
        answer["context"] = cloud_context(store.messages(thread_uuid))
    return web.json_response(answer, status=202)


async def _list_messages(request: web.Request) -> web.Response:
    messages = store_of(request).messages(request.match_info["thread_uuid"])
    page = parse_cloud_page_request(request.query)
    return web.json_response(cloud_message_page(messages, page))


async def _get_context(request: web.Request) -> web.Response:
    messages = store_of(request).messages(request.match_info["thread_uuid"])
    return web.json_response({"context": cloud_context(messages)})


async def _get_task(request: web.Request) -> web.Response:
    return web.json_response(store_of(request).get_task(request.match_info["task_uuid"]))


def _thread_object(store: ZepStore, thread: JsonObject) -> JsonObject:
    user_uuid = thread["user_uuid"]
    graph_uuid = store.get_user(user_uuid)["graph_uuid"] if user_uuid is not None else None
    return cloud_thread(thread, graph_uuid=graph_uuid)


def _lookup_key(body: JsonObject, *, supported: str) -> str:
    """The one lookup key of a `/lookup` body, which must be `supported`; ApiError(400) else."""
    given = [name for name in ("graph_id", "thread_id", "user_id") if body.get(name) is not None]
    if len(given) != 1:
        raise ApiError(400, "Give exactly one of graph_id, thread_id and user_id.")
    if given != [supported]:
        raise ApiError(
            400, f"The emulator looks this resource up by {supported} only.", param=given[0]
        )
    value = body[supported]
    if not isinstance(value, str):
        raise ApiError(400, f"{supported} must be a string.", param=supported)
    return value
