"""Settings, each read from the environment here and nowhere else, with its default beside it.

The defaults are the embedded setup: a SQLite file, in-memory channel layer, local-memory cache,
Foundry threads off. Production sets `SECRET_KEY`, `DEBUG=false`, `ALLOWED_HOSTS`, and usually
`DATABASE_URL` and `REDIS_URL`. The README has the full table.
"""

import os
import tempfile
import urllib.request
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean environment variable: 1/true/yes/on or 0/false/no/off (any case)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)

_DEV_SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"
SECRET_KEY = os.environ.get("SECRET_KEY", _DEV_SECRET_KEY)
if not DEBUG and SECRET_KEY == _DEV_SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # daphne first: its runserver serves ASGI (HTTP and WebSocket) in development.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "channels",
    "flags",
    "sessions_app",
    "foundry_integration",
    "zep_integration",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatproject.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "chatproject.asgi.application"
# Requests a server process runs at once (its pool of threads for Django's synchronous views).
SERVER_SYNC_THREADS = env_int("SERVER_SYNC_THREADS", 32)

# Database. SQLite serves concurrent clients only when configured for it: WAL lets readers run
# beside the one writer, the busy timeout makes a writer wait for the lock instead of failing,
# and IMMEDIATE transactions take the write lock up front, so a transaction never has to upgrade
# a read lock (the upgrade is what fails at once with "database is locked").
SQLITE_PATH = Path(os.environ.get("SQLITE_PATH", BASE_DIR / "db.sqlite3"))
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{SQLITE_PATH}"),
        # Connections live in the server's long-lived worker threads and are reused.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The same backend, with this process's writers queued in the process (chatproject/sqlite).
    DATABASES["default"]["ENGINE"] = "chatproject.sqlite"
    DATABASES["default"]["OPTIONS"] = {
        "timeout": env_int("SQLITE_BUSY_TIMEOUT_S", 30),
        "transaction_mode": "IMMEDIATE",
        "init_command": (
            "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;PRAGMA foreign_keys=ON;"
        ),
    }
    # Tests use a file too (not the shared-cache memory database, which has no WAL and no busy
    # timeout), so they exercise the same locking as the server; one per test run.
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"chat-test-{os.getpid()}.sqlite3")
    }

if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    options = DATABASES["default"].setdefault("OPTIONS", {})
    # Whatever the server's default: a chat turn's check that its session's sink states are
    # pending needs each statement's own snapshot (sessions_app.services._insert_sql).
    options["isolation_level"] = IsolationLevel.READ_COMMITTED
    if env_bool("DATABASE_POOL", True):
        # Under ASGI each request may run on a new thread, so per-thread persistent connections
        # (CONN_MAX_AGE) would pile up; a process-wide psycopg pool reuses them instead.
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        options["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN_SIZE", 2),
            "max_size": env_int("DATABASE_POOL_MAX_SIZE", 20),
            "timeout": env_int("DATABASE_POOL_TIMEOUT_S", 10),
        }

REDIS_URL = os.environ.get("REDIS_URL", "")

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 1000},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "chat",
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 1000},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Request bodies: a chat message is at most 32,000 characters; 1 MiB leaves room for JSON
# escapes of any text and still refuses (413) anything abusive before it is parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 1024 * 1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "sessions_app.auth.APITokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["sessions_app.parsers.BoundedJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "sessions_app.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Chat backend API",
    "DESCRIPTION": (
        "Chat with AI agents over REST. The WebSocket protocol at /api/v1/chat/ws/{session_id} "
        "is described in the README."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
}

# Agents: id -> dotted path of an Agent class. The default agent needs no network.
CHAT_AGENTS = {"echo": "sessions_app.agents.EchoAgent"}
CHAT_DEFAULT_AGENT = os.environ.get("CHAT_DEFAULT_AGENT", "echo")
CHAT_DEFAULT_PROJECT = os.environ.get("CHAT_DEFAULT_PROJECT", "default")
CHAT_MAX_MESSAGE_CHARS = 32_000
# How many earlier messages an agent is given as context for a turn.
CHAT_HISTORY_WINDOW = env_int("CHAT_HISTORY_WINDOW", 50)
CHAT_PAGE_SIZE = env_int("CHAT_PAGE_SIZE", 50)
CHAT_MAX_PAGE_SIZE = 200

# Persistence sinks every turn is mirrored to, in the background (see sessions_app.sinks).
CHAT_SINKS = ["foundry_integration.sink.FoundrySink", "zep_integration.sink.ZepSink"]

# The background sender (sessions_app.sync). With SYNC_IN_PROCESS each server process runs one;
# set it to false where `manage.py foundry_sync` workers run instead.
SYNC_IN_PROCESS = env_bool("SYNC_IN_PROCESS", True)
# A server process loads its active sinks' SDKs and first clients in the background when it
# starts serving, so that no user's turn waits for that.
SINK_WARM_UP = env_bool("SINK_WARM_UP", True)
# The first health check of a server process waits this long at most for that warm-up.
SINK_WARM_UP_WAIT_S = env_float("SINK_WARM_UP_WAIT_S", 10.0)
SYNC_POLL_INTERVAL_S = env_float("SYNC_POLL_INTERVAL_S", 1.0)
SYNC_BATCH_SIZE = env_int("SYNC_BATCH_SIZE", 20)  # messages per remote call batch
SYNC_CLAIM_LIMIT = env_int("SYNC_CLAIM_LIMIT", 64)  # sessions a sender takes per pass
SYNC_CONCURRENCY = env_int("SYNC_CONCURRENCY", 32)  # sessions delivered at once per sender
SYNC_LEASE_S = env_int("SYNC_LEASE_S", 60)  # a dead sender's claims expire after this
SYNC_WAKE_COALESCE_S = env_float("SYNC_WAKE_COALESCE_S", 0.05)  # gather wake-ups into one pass
SYNC_SHUTDOWN_GRACE_S = env_float("SYNC_SHUTDOWN_GRACE_S", 5.0)  # in-process sender, at exit
# The in-process sender uses the CPU its server leaves idle, and at least this share of the CPU
# the server gets (of a CPU, for a server alone on its core) however busy the server is (the
# turns come first; see sessions_app.sync.CpuPacer). 1: no limit.
# A saturated server loses about twice this share of its turns: the sender's thread switches and
# cache misses come on top of its own CPU. At 1% rather than 2%, a saturated server side by side
# with flag off answered 1-2% more requests, and its sender delivered about as much (it catches
# up when the load eases, at either share).
SYNC_IN_PROCESS_CPU_SHARE = env_float("SYNC_IN_PROCESS_CPU_SHARE", 0.01)
if not 0 < SYNC_IN_PROCESS_CPU_SHARE <= 1:
    raise ImproperlyConfigured(
        f"SYNC_IN_PROCESS_CPU_SHARE must be above 0 and at most 1, got {SYNC_IN_PROCESS_CPU_SHARE}"
    )
SYNC_BACKOFF_BASE_S = env_float("SYNC_BACKOFF_BASE_S", 1.0)
SYNC_BACKOFF_MAX_S = env_float("SYNC_BACKOFF_MAX_S", 300.0)
SYNC_BREAKER_THRESHOLD = env_int("SYNC_BREAKER_THRESHOLD", 5)  # failures in a row to open
SYNC_BREAKER_COOLDOWN_S = env_float("SYNC_BREAKER_COOLDOWN_S", 30.0)

# Azure AI Foundry threads. The flag's default comes from the environment; operators change it
# at run time in the admin (django-flags), and processes see a change within FOUNDRY_FLAG_CACHE_S.
USE_FOUNDRY_THREADS = env_bool("USE_FOUNDRY_THREADS", False)
FLAGS = {"USE_FOUNDRY_THREADS": [{"condition": "boolean", "value": USE_FOUNDRY_THREADS}]}
FOUNDRY_FLAG_CACHE_S = env_float("FOUNDRY_FLAG_CACHE_S", 2.0)
AZURE_FOUNDRY_AGENT_ENDPOINT = os.environ.get("AZURE_FOUNDRY_AGENT_ENDPOINT", "")
AZURE_FOUNDRY_AGENT_PROJECT = os.environ.get("AZURE_FOUNDRY_AGENT_PROJECT", "")
# Optional: without a key the SDK authenticates with DefaultAzureCredential (managed identity...).
AZURE_FOUNDRY_AGENT_KEY = os.environ.get("AZURE_FOUNDRY_AGENT_KEY", "")
FOUNDRY_THREAD_API = os.environ.get("FOUNDRY_THREAD_API", "agents")
# The SDK defaults are 300 s timeouts and 10 retries: far too long for a chat backend. The
# sender retries on its own schedule, so the SDK does not retry by default.
FOUNDRY_CONNECT_TIMEOUT_S = env_float("FOUNDRY_CONNECT_TIMEOUT_S", 5.0)
FOUNDRY_READ_TIMEOUT_S = env_float("FOUNDRY_READ_TIMEOUT_S", 15.0)
FOUNDRY_SDK_RETRIES = env_int("FOUNDRY_SDK_RETRIES", 0)
# The classic-threads SDK's HTTP client (aiohttp) uses HTTP(S)_PROXY only with its trust_env on,
# which looks the proxy and ~/.netrc up in a worker thread on every request (over a third of the
# SDK's CPU per message): on by default only where the environment names a proxy.
FOUNDRY_PROXY_FROM_ENV = env_bool(
    "FOUNDRY_PROXY_FROM_ENV", bool(set(urllib.request.getproxies_environment()) - {"no"})
)

# Zep memory: on when both URL and key are set, whatever the Foundry flag says.
# Cloud: the API root (https://api.getzep.com/api/v4; /api/v4 is added if missing).
# Community: the server root (http://host:8000; the SDK adds /api/v2).
ZEP_API_URL = os.environ.get("ZEP_API_URL", "")
ZEP_API_KEY = os.environ.get("ZEP_API_KEY", "")
ZEP_SDK = os.environ.get("ZEP_SDK", "cloud")
ZEP_TIMEOUT_S = env_float("ZEP_TIMEOUT_S", 10.0)
# Zep's limits: longer messages are split into parts, in order; calls carry at most 30 parts.
ZEP_MAX_MESSAGE_CHARS = env_int("ZEP_MAX_MESSAGE_CHARS", 2500)
ZEP_MAX_MESSAGES_PER_CALL = 30

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "sessions_app": {"level": LOG_LEVEL},
        "foundry_integration": {"level": LOG_LEVEL},
        "zep_integration": {"level": LOG_LEVEL},
        "django.request": {"level": "ERROR"},
    },
}

if not DEBUG:
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
