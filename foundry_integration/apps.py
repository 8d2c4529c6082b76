from django.apps import AppConfig


class FoundryIntegrationConfig(AppConfig):
    name = "foundry_integration"
    verbose_name = "Foundry integration"
    default_auto_field = "django.db.models.BigAutoField"
