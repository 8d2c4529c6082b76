"""The Foundry connection settings, checked once, and the SDK endpoint built from them."""

import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

from django.conf import settings

from foundry_integration.loopback import is_loopback

THREAD_APIS = ("agents", "conversations")


@dataclass(frozen=True)
class FoundryConfig:
    endpoint: str
    project: str
    key: str = field(repr=False)
    thread_api: str
    connect_timeout: float
    read_timeout: float
    sdk_retries: int
    proxy_from_env: bool

    @classmethod
    def from_settings(cls) -> "FoundryConfig":
        return cls(
            endpoint=settings.AZURE_FOUNDRY_AGENT_ENDPOINT.strip(),
            project=settings.AZURE_FOUNDRY_AGENT_PROJECT.strip(),
            key=settings.AZURE_FOUNDRY_AGENT_KEY,
            thread_api=settings.FOUNDRY_THREAD_API,
            connect_timeout=settings.FOUNDRY_CONNECT_TIMEOUT_S,
            read_timeout=settings.FOUNDRY_READ_TIMEOUT_S,
            sdk_retries=settings.FOUNDRY_SDK_RETRIES,
            proxy_from_env=settings.FOUNDRY_PROXY_FROM_ENV,
        )

    @property
    def project_endpoint(self) -> str:
        """`{endpoint}/api/projects/{project}`; an endpoint that already names the project is
        taken as it is."""
        endpoint = self.endpoint.rstrip("/")
        if re.search(r"/api/projects/[^/]+$", endpoint):
            return endpoint
        return f"{endpoint}/api/projects/{self.project}"

    @property
    def plain_http(self) -> bool:
        return urlparse(self.endpoint).scheme == "http"

    @property
    def auth_method(self) -> str:
        return "api key" if self.key else "DefaultAzureCredential (managed identity, ...)"

    def problem(self) -> str:
        """Why the configuration cannot work ('' when it can), naming the setting to fix."""
        if not self.endpoint:
            return "AZURE_FOUNDRY_AGENT_ENDPOINT is not set"
        parsed = urlparse(self.endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            return "AZURE_FOUNDRY_AGENT_ENDPOINT is not an http(s) URL"
        if not self.project and not re.search(r"/api/projects/[^/]+/?$", self.endpoint):
            return "AZURE_FOUNDRY_AGENT_PROJECT is not set"
        if parsed.scheme == "http" and not is_loopback(parsed.hostname):
            return "AZURE_FOUNDRY_AGENT_ENDPOINT must use https (http only for loopback hosts)"
        if self.thread_api not in THREAD_APIS:
            return f"FOUNDRY_THREAD_API must be one of {', '.join(THREAD_APIS)}"
        return ""

    def describe(self) -> dict[str, str]:
        """The configuration for operators: no secrets."""
        return {
            "endpoint": self.project_endpoint if self.endpoint else "(not set)",
            "thread API": self.thread_api,
            "authentication": self.auth_method,
            "timeouts": f"connect {self.connect_timeout:g} s, read {self.read_timeout:g} s",
            "SDK retries": str(self.sdk_retries),
            # The conversations API's client (httpx) reads the environment's proxy on its own.
            "proxy (threads API)": "from the environment" if self.proxy_from_env else "none",
        }
