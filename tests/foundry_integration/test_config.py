import logging

import pytest

from foundry_integration.config import FoundryConfig
from foundry_integration.flag import forget_cached_flag
from foundry_integration.sink import thread_store
from foundry_integration.threads import thread_metadata, validate_metadata
from sessions_app import services
from sessions_app.models import SinkState
from sessions_app.sinks import SessionInfo, SinkError, sink_get
from tests.foundry_integration.conftest import flag_settings
from tests.live import free_port


def config(endpoint: str, project: str = "proj", **extra) -> FoundryConfig:
    values = {
        "key": "",
        "thread_api": "agents",
        "connect_timeout": 1,
        "read_timeout": 1,
        "sdk_retries": 0,
        "proxy_from_env": False,
    }
    return FoundryConfig(endpoint=endpoint, project=project, **{**values, **extra})


@pytest.mark.parametrize(
    ("endpoint", "project", "expected"),
    [
        (
            "https://r.services.ai.azure.com",
            "p1",
            "https://r.services.ai.azure.com/api/projects/p1",
        ),
        (
            "https://r.services.ai.azure.com/",
            "p1",
            "https://r.services.ai.azure.com/api/projects/p1",
        ),
        (
            "https://r.services.ai.azure.com/api/projects/given",
            "",
            "https://r.services.ai.azure.com/api/projects/given",
        ),
        ("http://127.0.0.1:8700", "p", "http://127.0.0.1:8700/api/projects/p"),
    ],
)
def test_project_endpoint(endpoint, project, expected):
    cfg = config(endpoint, project)
    assert cfg.project_endpoint == expected
    assert cfg.problem() == ""


@pytest.mark.parametrize(
    ("endpoint", "project", "extra", "problem"),
    [
        ("", "p", {}, "AZURE_FOUNDRY_AGENT_ENDPOINT is not set"),
        ("https://r.example", "", {}, "AZURE_FOUNDRY_AGENT_PROJECT is not set"),
        ("ftp://r.example", "p", {}, "AZURE_FOUNDRY_AGENT_ENDPOINT is not an http(s) URL"),
        ("http://r.example", "p", {}, "AZURE_FOUNDRY_AGENT_ENDPOINT must use https"),
        ("https://r.example", "p", {"thread_api": "v9"}, "FOUNDRY_THREAD_API must be one of"),
    ],
)
def test_problems_name_the_setting(endpoint, project, extra, problem):
    assert config(endpoint, project, **extra).problem().startswith(problem)


def test_description_holds_no_secret():
    described = str(config("https://r.example", "p", key="super-secret-key").describe())
    assert "super-secret-key" not in described
    assert "api key" in described


def test_metadata_limits_are_checked_before_any_call():
    with pytest.raises(ValueError, match="17 keys"):
        validate_metadata({f"k{n}": "v" for n in range(17)})
    with pytest.raises(ValueError, match="over 64"):
        validate_metadata({"k" * 65: "v"})
    with pytest.raises(ValueError, match="over 512"):
        validate_metadata({"k": "v" * 513})
    with pytest.raises(ValueError, match="strings"):
        validate_metadata({"k": 5})
    assert validate_metadata({f"k{n}": "v" * 512 for n in range(16)})


def test_thread_metadata_has_the_design_keys():
    from django.utils import timezone

    now = timezone.now()
    assert thread_metadata(SessionInfo("7", "echo", "p", "s", now)) == {
        "user_id": "7",
        "agent_id": "echo",
        "project_id": "p",
        "session_id": "s",
        "created_at": now.isoformat(),
    }


@pytest.mark.django_db
def test_flag_on_without_endpoint_runs_local_and_says_why(settings, user, client, caplog):
    settings.FLAGS = flag_settings(True)
    settings.AZURE_FOUNDRY_AGENT_ENDPOINT = ""
    settings.AZURE_FOUNDRY_AGENT_PROJECT = "p"
    forget_cached_flag()
    with caplog.at_level(logging.WARNING):
        first = services.chat_turn(user=user, message="hi", session_id="m")
        services.chat_turn(user=user, message="again", session_id="m")
    assert first.persistence == "local"
    assert not SinkState.objects.exists()
    warnings = [r for r in caplog.records if "USE_FOUNDRY_THREADS is on but" in r.message]
    assert len(warnings) == 1
    assert "AZURE_FOUNDRY_AGENT_ENDPOINT is not set" in warnings[0].message
    health = client.get("/api/v1/health").json()
    assert health["sinks"]["foundry"] == {
        "active": False,
        "reason": "AZURE_FOUNDRY_AGENT_ENDPOINT is not set",
    }
    assert sink_get("foundry").status().active is False
    forget_cached_flag()


@pytest.mark.asyncio
@pytest.mark.parametrize("proxy_from_env", [False, True])
async def test_a_proxy_in_the_environment_is_used_only_when_asked(
    emulator, monkeypatch, proxy_from_env
):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    store = thread_store(
        config(emulator.base_url, key="emulator-key", proxy_from_env=proxy_from_env)
    )
    try:
        if proxy_from_env:
            with pytest.raises(SinkError):
                await store.create_thread(metadata={})
            assert emulator.state.counters.total == 0
        else:
            assert (await store.create_thread(metadata={})).startswith("thread_")
    finally:
        await store.aclose()
