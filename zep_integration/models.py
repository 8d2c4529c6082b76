from django.conf import settings
from django.db import models


class ZepUser(models.Model):
    """The Zep user that holds a chat user's threads, made once per SDK: Zep Cloud assigns its
    id (a uuid), the Community Edition takes ours."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    sdk = models.CharField(max_length=16)
    remote_user_id = models.CharField(max_length=256)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "sdk"], name="zep_user_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} -> {self.sdk}:{self.remote_user_id}"
