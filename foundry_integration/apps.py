from django.apps import AppConfig


class FoundryIntegrationConfig(AppConfig):
    name = "foundry_integration"
    verbose_name = "Foundry integration"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from foundry_integration import checks  # noqa: F401  (registers the system check)
