"""Operators read sessions and messages here and may delete sessions; nothing is edited by hand."""

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from sessions_app import services
from sessions_app.models import ChatMessage, ChatSession, RemoteDeletion, SinkState
from sessions_app.sinks import active_sinks, all_sinks, sink_get
from sessions_app.sync import notify_sender

# A session page shows this many of the latest messages; the messages list has them all.
INLINE_MESSAGES = 200


def sync_summary(state: SinkState) -> str:
    """synced / pending n / failing (attempts, next try, last error)."""
    if state.last_error and state.attempts:
        return (
            f"failing: {state.attempts} attempts, next try "
            f"{state.next_attempt_at:%Y-%m-%d %H:%M:%S}, last error: {state.last_error[:200]}"
        )
    if state.pending_count:
        return f"pending {state.pending_count}"
    return "synced"


def sink_label(state: SinkState) -> str:
    """The sink's name, with the API the remote thread lives on where the sink has several."""
    try:
        kind = sink_get(state.sink).remote_kind(state.remote_id) if state.remote_id else ""
    except LookupError:
        kind = ""
    return f"{state.sink} ({kind})" if kind else state.sink


class HasThreadFilter(admin.SimpleListFilter):
    title = "has Foundry thread"
    parameter_name = "has_thread"

    def lookups(self, request, model_admin):
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(foundry_thread_id__isnull=self.value() == "no")
        return queryset


class ReadOnlyAdminMixin:
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ChatMessageInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = ChatMessage
    fields = ["seq", "role", "agent_id", "content", "created_at"]
    readonly_fields = fields
    ordering = ["seq"]
    extra = 0
    can_delete = False
    verbose_name_plural = f"Messages (the latest {INLINE_MESSAGES})"


@admin.register(ChatSession)
class ChatSessionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "session_id",
        "owner",
        "agent_id",
        "project_id",
        "foundry_thread_id",
        "sync_state",
        "last_seq",
        "last_activity_at",
    ]
    list_filter = ["agent_id", "project_id", HasThreadFilter]
    search_fields = ["owner__username", "owner__email", "session_id", "foundry_thread_id"]
    list_select_related = ["owner"]
    actions = ["retry_sync_now", "recreate_remote_threads", "delete_remote_threads"]
    readonly_fields = [
        "owner",
        "session_id",
        "agent_id",
        "project_id",
        "foundry_thread_id",
        "last_seq",
        "user_turns",
        "created_at",
        "updated_at",
        "last_activity_at",
        "history_import_from",
        "sync_details",
        "all_messages",
    ]
    fields = readonly_fields
    inlines = [ChatMessageInline]
    date_hierarchy = "last_activity_at"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("sink_states")

    @admin.display(description="sync")
    def sync_state(self, obj: ChatSession) -> str:
        states = list(obj.sink_states.all())
        if not states:
            return "local only"
        return "; ".join(f"{sink_label(state)}: {sync_summary(state)}" for state in states)

    @admin.display(description="Sync with remote stores")
    def sync_details(self, obj: ChatSession):
        rows = [
            (
                sink_label(state),
                state.remote_id or "(none yet)",
                sync_summary(state),
                f"{state.delivered_seq} of {state.wanted_through}",
                state.attempts,
                state.next_attempt_at,
                state.last_error or "-",
            )
            for state in obj.sink_states.all()
        ]
        if not rows:
            return "Local only."
        return format_html(
            "<table><tr><th>sink</th><th>thread</th><th>state</th><th>delivered</th>"
            "<th>attempts</th><th>next try</th><th>last error</th></tr>{}</table>",
            format_html_join("", "<tr>" + "<td>{}</td>" * 7 + "</tr>", rows),
        )

    @admin.action(description="Retry sync now", permissions=["delete"])
    def retry_sync_now(self, request, queryset):
        for session in queryset:
            services.session_sync_retry(session=session)
        self.message_user(request, f"{queryset.count()} session(s) will be synced now.")

    @admin.action(
        description="Re-create remote threads and resync the whole history", permissions=["delete"]
    )
    def recreate_remote_threads(self, request, queryset):
        for session in queryset:
            for sink in active_sinks():
                services.session_sync_restart(session=session, sink=sink)
        self.message_user(request, f"{queryset.count()} session(s) will be resent.")

    @admin.action(
        description="Delete remote threads (sessions stay, local only)", permissions=["delete"]
    )
    def delete_remote_threads(self, request, queryset):
        deleted = [
            thread_id
            for session in queryset
            for sink in all_sinks()
            if (thread_id := services.session_remote_delete(session=session, sink=sink))
        ]
        self.message_user(request, f"{len(deleted)} remote thread(s) queued for deletion.")

    @admin.display(description="All messages")
    def all_messages(self, obj: ChatSession) -> str:
        url = reverse("admin:sessions_app_chatmessage_changelist") + f"?session__id__exact={obj.pk}"
        return format_html('<a href="{}">{} messages</a>', url, obj.last_seq)

    def get_formset_kwargs(self, request, obj, inline, prefix):
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, ChatMessageInline) and obj is not None:
            kwargs["queryset"] = kwargs["queryset"].filter(seq__gt=obj.last_seq - INLINE_MESSAGES)
        return kwargs

    def get_deleted_objects(self, objs, request):
        # Messages go with their session: no separate permission to delete them is needed.
        to_delete, model_count, _, protected = super().get_deleted_objects(objs, request)
        return to_delete, model_count, set(), protected

    def delete_model(self, request: HttpRequest, obj: ChatSession) -> None:
        services.session_delete(session=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> None:
        for session in queryset:
            services.session_delete(session=session)


@admin.register(ChatMessage)
class ChatMessageAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["session", "seq", "role", "agent_id", "short_content", "created_at"]
    list_filter = ["role", "agent_id"]
    search_fields = ["session__session_id", "session__owner__username"]
    list_select_related = ["session"]
    readonly_fields = ["session", "seq", "role", "agent_id", "content", "created_at"]
    fields = readonly_fields
    ordering = ["session", "seq"]
    show_full_result_count = False

    @admin.display(description="content")
    def short_content(self, obj: ChatMessage) -> str:
        return obj.content if len(obj.content) <= 80 else obj.content[:80] + "…"

    def has_delete_permission(self, request, obj=None):
        # Messages go with their session; deleting one would tear a hole in the history.
        return False


@admin.register(RemoteDeletion)
class RemoteDeletionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Remote threads of deleted sessions still to delete (the sender retries until done)."""

    list_display = ["sink", "remote_id", "session_key", "attempts", "next_attempt_at", "last_error"]
    list_filter = ["sink"]
    search_fields = ["remote_id", "session_key"]
    actions = ["retry_now"]

    @admin.action(description="Retry now")
    def retry_now(self, request, queryset):
        count = queryset.update(next_attempt_at=timezone.now(), attempts=0)
        notify_sender()
        self.message_user(request, f"{count} deletion(s) will be retried now.")
