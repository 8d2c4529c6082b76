"""Settings of the constant-view baseline: the least Django needs to answer over ASGI.

BENCH_BASELINE_MIDDLEWARE=product puts the product's middleware stack (and the apps it needs) in
front of the same view, to tell the cost of Django's middleware apart from the chat code's.
"""

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

if os.environ.get("BENCH_BASELINE_MIDDLEWARE") == "product":
    INSTALLED_APPS = [
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
    ]
    # The product's list itself, so the two stay the same.
    from chatproject import settings as product

    MIDDLEWARE = list(product.MIDDLEWARE)
