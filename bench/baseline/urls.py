from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

BODY = {
    "session_id": "constant",
    "agent_id": "echo",
    "project_id": "default",
    "reply": 'Turn 1: you said "benchmark".',
    "thread_id": None,
    "persistence": "local",
}


@csrf_exempt  # as DRF's views are
def constant(request):
    """A sync view, as the chat view is: Django runs it in a worker thread under ASGI."""
    return JsonResponse(BODY)


urlpatterns = [
    path("api/v1/chat", constant),
    path("health", constant),
]
