from django.db import models

from sessions_app.models import SinkHealth, SinkState


class FoundryStatus(SinkHealth):
    """No table of its own: gives the admin its Foundry status page (see admin.py)."""

    class Meta:
        proxy = True
        verbose_name = "Foundry status"
        verbose_name_plural = "Foundry status"


class ThreadMigration(models.Model):
    """Copying one session's classic thread into a conversation (`foundry_migrate_threads`).

    Progress is recorded as it goes, so a run that stopped (crash, fault) resumes where it was;
    the session is switched to the conversation only once the copy is complete.
    """

    state = models.OneToOneField(
        SinkState, on_delete=models.CASCADE, related_name="thread_migration"
    )
    source_id = models.CharField(max_length=256)
    target_id = models.CharField(max_length=256, blank=True, default="")
    copied = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return f"{self.source_id} -> {self.target_id or '?'} ({self.copied})"
