"""What the HTTP layers share: the app key of the state, JSON bodies and per-API error answers."""

from aiohttp import web

from foundry_integration.emulator.kit import read_json_object

from .state import ZepEmulatorState
from .store import ZepStore
from .wire import ApiError, JsonObject, cloud_error_body, community_error_body

CLOUD_ROOT = "/api/v4"
COMMUNITY_ROOT = "/api/v2"

STATE_KEY = web.AppKey("zep_emulator_state", ZepEmulatorState)


def store_of(request: web.Request) -> ZepStore:
    """The store behind the app that is answering `request`."""
    return request.app[STATE_KEY].store


def error_response(
    request: web.Request, error: ApiError, *, headers: dict[str, str] | None = None
) -> web.Response:
    """`error` in the error body of the API that `request` addresses.

    v2 paths get the Community Edition `{"message"}` body; everything else (v4 and the control
    routes) gets the v4 `{"error": {...}}` envelope.
    """
    if request.path.startswith(f"{COMMUNITY_ROOT}/"):
        body = community_error_body(error)
    else:
        body = cloud_error_body(error)
    return web.json_response(body, status=error.status, headers=headers)


async def json_body(request: web.Request) -> JsonObject:
    """The request's JSON object; an empty body counts as `{}`."""
    return await read_json_object(request, ApiError)


def optional_string(body: JsonObject, name: str) -> str | None:
    """`body[name]` if it is a string, None if absent or null; ApiError(400) otherwise."""
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string.", param=name)
    return value


def optional_object(body: JsonObject, name: str) -> JsonObject | None:
    """`body[name]` if it is an object, None if absent or null; ApiError(400) otherwise."""
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise ApiError(400, f"{name} must be an object.", param=name)
    return value
