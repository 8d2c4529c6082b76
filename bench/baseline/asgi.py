"""`daphne bench.baseline.asgi:application`: the constant-view baseline."""

import os

from django.core.asgi import get_asgi_application

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.baseline.settings"
application = get_asgi_application()
