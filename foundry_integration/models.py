from sessions_app.models import SinkHealth


class FoundryStatus(SinkHealth):
    """No table of its own: gives the admin its Foundry status page (see admin.py)."""

    class Meta:
        proxy = True
        verbose_name = "Foundry status"
        verbose_name_plural = "Foundry status"
