from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import pre_delete


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Chat sessions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        pre_delete.connect(
            _before_user_delete,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="sessions_app.user_sessions_delete",
        )


def _before_user_delete(sender, instance, **kwargs) -> None:
    from sessions_app.services import user_sessions_delete

    user_sessions_delete(user=instance)
