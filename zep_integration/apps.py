from django.apps import AppConfig


class ZepIntegrationConfig(AppConfig):
    name = "zep_integration"
    verbose_name = "Zep memory"
    default_auto_field = "django.db.models.BigAutoField"
