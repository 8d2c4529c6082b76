"""Operators read sessions and messages here and may delete sessions; nothing is edited by hand."""

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from sessions_app import services
from sessions_app.models import ChatMessage, ChatSession

# A session page shows this many of the latest messages; the messages list has them all.
INLINE_MESSAGES = 200


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
        "last_seq",
        "last_activity_at",
    ]
    list_filter = ["agent_id", "project_id", HasThreadFilter]
    search_fields = ["owner__username", "owner__email", "session_id", "foundry_thread_id"]
    list_select_related = ["owner"]
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
        "all_messages",
    ]
    fields = readonly_fields
    inlines = [ChatMessageInline]
    date_hierarchy = "last_activity_at"

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
