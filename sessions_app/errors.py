"""One JSON error shape for every failure, REST and WebSocket alike:
`{"code": str, "detail": str, "fields"?: {field: [messages]}}`. Never HTML."""

import logging
from typing import Any

from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


def error_body(code: str, detail: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "detail": detail}
    if fields:
        body["fields"] = fields
    return body


def validation_error_body(errors: Any) -> dict[str, Any]:
    """Turn serializer errors into the error shape; `detail` repeats the first message so that a
    client that shows one line shows a useful one."""
    if isinstance(errors, dict):
        fields = {name: [str(m) for m in _as_list(msgs)] for name, msgs in errors.items()}
        name, messages = next(iter(fields.items()))
        first = messages[0] if messages else "Invalid input."
        detail = first if name == "non_field_errors" else f"{name}: {first}"
        return error_body("invalid", detail, fields)
    messages = [str(m) for m in _as_list(errors)]
    return error_body("invalid", messages[0] if messages else "Invalid input.")


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [f"{k}: {v}" for k, v in value.items()]
    return [value]


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, answering in our error shape."""
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = validation_error_body(exc.detail)
    elif isinstance(exc, Http404):
        response.data = error_body("not_found", "Not found.")
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        response.data = error_body(code, str(exc.detail))
    return response


def _json_error(status_code: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse(error_body(code, detail), status=status_code)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_error(400, "bad_request", "Bad request.")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_error(403, "permission_denied", "Permission denied.")


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_error(404, "not_found", "Not found.")


def server_error(request: HttpRequest) -> JsonResponse:
    return _json_error(500, "server_error", "Internal server error.")
