"""The Foundry status page: the flag (and changing it), the connection settings (no secrets), the
circuit breaker, the backlog and the latest errors."""

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from foundry_integration.config import FoundryConfig
from foundry_integration.flag import (
    FLAG_NAME,
    flag_override,
    flag_source,
    forget_cached_flag,
    foundry_threads_enabled,
)
from foundry_integration.models import FoundryStatus
from foundry_integration.sink import FoundrySink
from sessions_app.models import RemoteDeletion, SinkHealth, SinkState
from sessions_app.sinks import sink_get

FLAG_CHOICES = {"on": True, "off": False, "default": None}


@admin.register(FoundryStatus)
class FoundryStatusAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def may_change_flag(self, request: HttpRequest) -> bool:
        return request.user.has_perm("flags.change_flagstate")

    def changelist_view(self, request: HttpRequest, extra_context=None):
        if request.method == "POST":
            return self.change_flag(request)
        forget_cached_flag()
        sink = sink_get(FoundrySink.name)
        status = sink.status()
        config = FoundryConfig.from_settings()
        states = SinkState.objects.filter(sink=sink.name)
        health = SinkHealth.objects.filter(sink=sink.name).first()
        context = {
            **self.admin_site.each_context(request),
            "title": "Foundry status",
            "opts": self.model._meta,
            "flag_name": FLAG_NAME,
            "flag_enabled": foundry_threads_enabled(),
            "flag_source": flag_source(),
            "may_change_flag": self.may_change_flag(request),
            "active": status.active,
            "reason": status.reason,
            "config": config.describe(),
            "health": health,
            "breaker_open": bool(
                health and health.open_until and health.open_until > timezone.now()
            ),
            "pending_sessions": states.pending().count(),
            "pending_messages": states.pending_messages(),
            "failing_sessions": SinkState.objects.filter(sink=sink.name, attempts__gt=0).count(),
            "pending_deletions": RemoteDeletion.objects.filter(sink=sink.name).count(),
            "deletions_url": reverse("admin:sessions_app_remotedeletion_changelist"),
            "sessions_url": reverse("admin:sessions_app_chatsession_changelist"),
            "flags_url": reverse("admin:flags_flagstate_changelist"),
            "recent_errors": SinkState.objects.filter(sink=sink.name)
            .exclude(last_error="")
            .select_related("session")
            .order_by("-last_error_at")[:10],
        }
        return TemplateResponse(request, "admin/foundry_integration/status.html", context)

    def change_flag(self, request: HttpRequest):
        choice = request.POST.get("flag")
        if not self.may_change_flag(request) or choice not in FLAG_CHOICES:
            messages.error(request, "You may not change the flag, or the choice is unknown.")
        else:
            flag_override(FLAG_CHOICES[choice])
            messages.success(
                request,
                f"{FLAG_NAME}: {choice}. Every server process applies it within seconds.",
            )
        return HttpResponseRedirect(request.path)
