"""Builds the async Azure SDK client from FoundryConfig: credential, timeouts, retries."""

import httpx
from azure.ai.agents.aio import AgentsClient
from azure.core.credentials import AzureKeyCredential
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import AzureKeyCredentialPolicy, SansIOHTTPPolicy

from foundry_integration.config import FoundryConfig


class AllowPlainHttpPolicy(SansIOHTTPPolicy):
    """azure-core refuses to send credentials over http; the config allows http only for
    loopback hosts (the local emulator), and only then is this policy added."""

    def on_request(self, request: PipelineRequest) -> None:
        request.context["enforce_https"] = False


def agents_client(config: FoundryConfig) -> tuple[AgentsClient, object | None]:
    """An aio AgentsClient for the configured project, and the credential to close with it (if
    any). With a key, the key goes in the `api-key` header; without, DefaultAzureCredential
    supplies tokens."""
    kwargs = {
        "connection_timeout": config.connect_timeout,
        "read_timeout": config.read_timeout,
        "retry_total": config.sdk_retries,
        "use_env_settings": config.proxy_from_env,
    }
    if config.plain_http:
        kwargs["per_call_policies"] = [AllowPlainHttpPolicy()]
    if config.key:
        key = AzureKeyCredential(config.key)
        kwargs["authentication_policy"] = AzureKeyCredentialPolicy(key, "api-key")
        return AgentsClient(config.project_endpoint, key, **kwargs), None
    from azure.identity.aio import DefaultAzureCredential

    credential = DefaultAzureCredential()
    return AgentsClient(config.project_endpoint, credential, **kwargs), credential


def conversations_clients(config: FoundryConfig):
    """The aio AIProjectClient, its AsyncOpenAI client (on `{endpoint}/openai/v1`) and the
    credential to close with them. The project client's SDK retries are off as elsewhere; the
    key, when set, goes both as the bearer token and in the `api-key` header."""
    from azure.ai.projects.aio import AIProjectClient

    key = AzureKeyCredential(config.key) if config.key else None
    if key is None:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
    else:
        credential = None
    project = AIProjectClient(endpoint=config.project_endpoint, credential=credential or key)
    openai_options = {
        "max_retries": config.sdk_retries,
        "timeout": httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
    }
    if key is not None:
        openai_options["api_key"] = config.key
        openai_options["default_headers"] = {"api-key": config.key}
    return project, project.get_openai_client(**openai_options), credential
