"""Settings of the constant-view baseline: the least Django needs to answer over ASGI."""

import os

DEBUG = False
SECRET_KEY = os.environ.get("SECRET_KEY", "bench-baseline-not-secret")
ALLOWED_HOSTS = ["127.0.0.1"]
ROOT_URLCONF = "bench.baseline.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict = {}
USE_TZ = True
LOGGING_CONFIG = None
