"""The Foundry threads emulator, driven by the real azure-ai-agents clients (sync and aio).

No mocks: every test talks HTTP to an emulator on a loopback port. Clients are built with
`retry_total=0` unless a test is about retries, so each fault maps to exactly one request.
"""

import argparse
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.ai.agents import AgentsClient
from azure.ai.agents.aio import AgentsClient as AsyncAgentsClient
from azure.ai.agents.models import ListSortOrder, MessageInputTextBlock
from azure.core.credentials import AccessToken, AzureKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import AzureKeyCredentialPolicy, SansIOHTTPPolicy

from foundry_integration.emulator import (
    EmulatorServer,
    EmulatorState,
    add_arguments,
    check_bind_host,
    run_emulator,
    state_from_options,
)

PROJECT = "testproj"
THREADS_ROUTE = "/api/projects/{project}/threads"
THREAD_ROUTE = "/api/projects/{project}/threads/{thread_id}"
MESSAGES_ROUTE = "/api/projects/{project}/threads/{thread_id}/messages"


class StaticTokenCredential:
    """A TokenCredential that always hands out the same long-lived token."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("test-token", int(time.time()) + 3600)


class AsyncStaticTokenCredential:
    """The AsyncTokenCredential counterpart of StaticTokenCredential."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("test-token", int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> "AsyncStaticTokenCredential":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class AllowPlainHttpPolicy(SansIOHTTPPolicy):
    """Lets the bearer-token policy send to the emulator's http:// URL.

    BearerTokenCredentialPolicy raises ServiceRequestError for non-https URLs unless the pipeline
    context says `enforce_https` is False; a per-call policy runs before it and sets that.
    """

    def on_request(self, request: PipelineRequest) -> None:
        request.context["enforce_https"] = False


class NoAuthPolicy(SansIOHTTPPolicy):
    """An authentication policy that adds no credential at all."""


CLIENT_OPTIONS: dict[str, Any] = {
    "per_call_policies": [AllowPlainHttpPolicy()],
    "retry_total": 0,
    "connection_timeout": 5,
    "read_timeout": 10,
}


def make_client(endpoint: str, **overrides: Any) -> AgentsClient:
    return AgentsClient(endpoint, StaticTokenCredential(), **{**CLIENT_OPTIONS, **overrides})


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_emulator(emulator: EmulatorServer) -> None:
    emulator.state.reset(clear_data=True)


@pytest.fixture
def endpoint(emulator: EmulatorServer) -> str:
    return emulator.project_endpoint(PROJECT)


@pytest.fixture
def client(endpoint: str) -> Iterator[AgentsClient]:
    with make_client(endpoint) as agents_client:
        yield agents_client


def control(emulator: EmulatorServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{emulator.base_url}/_emulator{path}", timeout=5, **kwargs)


def api_requests(emulator: EmulatorServer) -> dict[str, Any]:
    return control(emulator, "GET", "/state").json()["requests"]


def wire_error(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] is None
    assert body["error"]["code"] is None
    return body["error"]


# --- threads -------------------------------------------------------------------------------


def test_thread_create_get_update_delete(client: AgentsClient) -> None:
    before = int(time.time())
    thread = client.threads.create(
        metadata={"session": "s-1", "user": "alice"},
        messages=[{"role": "user", "content": "hello"}],
    )

    assert thread.id.startswith("thread_")
    assert len(thread.id) == len("thread_") + 24
    assert thread.id[len("thread_") :].isalnum()
    assert before <= thread.as_dict()["created_at"] <= int(time.time())
    assert thread.metadata == {"session": "s-1", "user": "alice"}
    assert client.threads.get(thread.id).metadata == {"session": "s-1", "user": "alice"}
    [initial] = client.messages.list(thread.id)
    assert initial.text_messages[0].text.value == "hello"

    updated = client.threads.update(thread.id, metadata={"title": "renamed"})
    assert updated.metadata == {"title": "renamed"}  # replaced, not merged
    assert client.threads.get(thread.id).metadata == {"title": "renamed"}

    client.threads.delete(thread.id)
    with pytest.raises(ResourceNotFoundError):
        client.threads.get(thread.id)
    with pytest.raises(ResourceNotFoundError):
        client.threads.delete(thread.id)


def test_wire_shapes(emulator: EmulatorServer, endpoint: str) -> None:
    headers = {"Authorization": "Bearer anything"}
    params = {"api-version": "v1"}
    thread = requests.post(
        f"{endpoint}/threads", json={}, headers=headers, params=params, timeout=5
    ).json()
    assert thread == {
        "id": thread["id"],
        "object": "thread",
        "created_at": thread["created_at"],
        "metadata": {},
        "tool_resources": {},
    }
    message = requests.post(
        f"{endpoint}/threads/{thread['id']}/messages",
        json={"role": "user", "content": "hi"},
        headers=headers,
        params=params,
        timeout=5,
    ).json()
    assert message["id"].startswith("msg_") and len(message["id"]) == len("msg_") + 24
    assert message == {
        "id": message["id"],
        "object": "thread.message",
        "created_at": message["created_at"],
        "thread_id": thread["id"],
        "status": "completed",
        "role": "user",
        "content": [{"type": "text", "text": {"value": "hi", "annotations": []}}],
        "assistant_id": None,
        "run_id": None,
        "attachments": [],
        "metadata": {},
    }
    deleted = requests.delete(
        f"{endpoint}/threads/{thread['id']}", headers=headers, params=params, timeout=5
    ).json()
    assert deleted == {"id": thread["id"], "object": "thread.deleted", "deleted": True}


def test_threads_are_stored_per_project(emulator: EmulatorServer, client: AgentsClient) -> None:
    thread = client.threads.create()
    with make_client(emulator.project_endpoint("otherproj")) as other_project:
        with pytest.raises(ResourceNotFoundError):
            other_project.threads.get(thread.id)


# --- messages ------------------------------------------------------------------------------


def test_message_create_accepts_string_and_content_blocks(client: AgentsClient) -> None:
    thread = client.threads.create()

    from_string = client.messages.create(
        thread.id, role="user", content="plain", metadata={"turn": "1"}
    )
    from_blocks = client.messages.create(
        thread.id, role="assistant", content=[MessageInputTextBlock(text="from a block")]
    )

    assert from_string.role == "user"
    assert from_string.text_messages[0].text.value == "plain"
    assert from_string.metadata == {"turn": "1"}
    assert from_string.agent_id is None and from_string.run_id is None
    assert from_blocks.role == "assistant"
    assert from_blocks.as_dict()["content"] == [
        {"type": "text", "text": {"value": "from a block", "annotations": []}}
    ]


def test_listing_250_messages_through_sdk_paging_in_both_orders(
    emulator: EmulatorServer, client: AgentsClient
) -> None:
    thread = client.threads.create()
    for number in range(250):
        client.messages.create(thread.id, role="user", content=f"message {number:03d}")
    expected = [f"message {number:03d}" for number in range(250)]

    ascending = list(client.messages.list(thread.id, order=ListSortOrder.ASCENDING, limit=100))
    descending = list(client.messages.list(thread.id))  # service defaults: desc, 20 per page

    assert [message.text_messages[0].text.value for message in ascending] == expected
    assert [message.text_messages[0].text.value for message in descending] == expected[::-1]
    # The SDK stops only on an empty page with last_id null: 3 + 1 pages asc, 13 + 1 desc.
    assert api_requests(emulator)["by_route"][f"GET {MESSAGES_ROUTE}"] == 4 + 14


def test_page_past_the_end_is_empty_with_null_ids(endpoint: str, client: AgentsClient) -> None:
    thread = client.threads.create(messages=[{"role": "user", "content": "only"}])
    [only] = client.messages.list(thread.id)

    page = requests.get(
        f"{endpoint}/threads/{thread.id}/messages",
        params={"api-version": "v1", "after": only.id},
        headers={"Authorization": "Bearer anything"},
        timeout=5,
    ).json()

    assert page == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


def test_before_cursor_bounds_the_listing(client: AgentsClient) -> None:
    thread = client.threads.create(
        messages=[{"role": "user", "content": str(number)} for number in range(5)]
    )
    ids = [message.id for message in client.messages.list(thread.id, order="asc")]

    bounded = client.messages.list(thread.id, order="asc", before=ids[3], limit=2)

    assert [message.id for message in bounded] == ids[:3]


@pytest.mark.parametrize(
    ("list_options", "expected_message"),
    [
        ({"limit": 0}, "Invalid 'limit'"),
        ({"limit": 101}, "Invalid 'limit'"),
        ({"order": "sideways"}, "Invalid 'order'"),
    ],
)
def test_list_parameters_are_validated(
    client: AgentsClient, list_options: dict[str, Any], expected_message: str
) -> None:
    thread = client.threads.create()
    with pytest.raises(HttpResponseError) as raised:
        list(client.messages.list(thread.id, **list_options))
    assert raised.value.status_code == 400
    assert expected_message in str(raised.value)


def test_message_on_unknown_thread_is_404(client: AgentsClient) -> None:
    with pytest.raises(ResourceNotFoundError):
        client.messages.create("thread_doesnotexist", role="user", content="hi")
    with pytest.raises(ResourceNotFoundError):
        list(client.messages.list("thread_doesnotexist"))


@pytest.mark.parametrize(
    ("message_options", "expected_message"),
    [
        ({"role": "system", "content": "hi"}, "Invalid 'role'"),
        ({"role": "user", "content": ""}, "Invalid 'content'"),
        (
            {"role": "user", "content": [{"type": "video", "video": {}}]},
            "Invalid 'content[0].type'",
        ),
    ],
)
def test_bad_message_is_400(
    client: AgentsClient, message_options: dict[str, Any], expected_message: str
) -> None:
    thread = client.threads.create()
    with pytest.raises(HttpResponseError) as raised:
        client.messages.create(thread.id, **message_options)
    assert raised.value.status_code == 400
    assert expected_message in str(raised.value)


def test_bad_json_and_missing_content_are_400_with_error_body(
    endpoint: str, client: AgentsClient
) -> None:
    thread = client.threads.create()
    url = f"{endpoint}/threads/{thread.id}/messages"
    auth = {"Authorization": "Bearer anything"}

    bad_json = requests.post(
        url, data=b"{not json", headers=auth, params={"api-version": "v1"}, timeout=5
    )
    no_content = requests.post(
        url, json={"role": "user"}, headers=auth, params={"api-version": "v1"}, timeout=5
    )

    assert bad_json.status_code == 400
    assert "not valid JSON" in wire_error(bad_json)["message"]
    assert no_content.status_code == 400
    assert wire_error(no_content)["message"] == "Missing required parameter: 'content'."


# --- metadata limits -----------------------------------------------------------------------

BAD_METADATA = [
    pytest.param({f"k{n}": "v" for n in range(17)}, "at most 16 properties", id="17-pairs"),
    pytest.param({"k" * 65: "v"}, "key too long", id="65-char-key"),
    pytest.param({"k": "v" * 513}, "maximum length 512", id="513-char-value"),
    pytest.param({"k": 5}, "expected a string", id="non-string-value"),
]


@pytest.mark.parametrize(("metadata", "expected_message"), BAD_METADATA)
def test_metadata_limits_on_thread_create(
    client: AgentsClient, metadata: dict[str, Any], expected_message: str
) -> None:
    with pytest.raises(HttpResponseError) as raised:
        client.threads.create(metadata=metadata)
    assert raised.value.status_code == 400
    assert expected_message in str(raised.value)


@pytest.mark.parametrize(("metadata", "expected_message"), BAD_METADATA)
def test_metadata_limits_on_thread_update(
    client: AgentsClient, metadata: dict[str, Any], expected_message: str
) -> None:
    thread = client.threads.create(metadata={"kept": "yes"})
    with pytest.raises(HttpResponseError) as raised:
        client.threads.update(thread.id, metadata=metadata)
    assert raised.value.status_code == 400
    assert expected_message in str(raised.value)
    assert client.threads.get(thread.id).metadata == {"kept": "yes"}


@pytest.mark.parametrize(("metadata", "expected_message"), BAD_METADATA)
def test_metadata_limits_on_message_create(
    client: AgentsClient, metadata: dict[str, Any], expected_message: str
) -> None:
    thread = client.threads.create()
    with pytest.raises(HttpResponseError) as raised:
        client.messages.create(thread.id, role="user", content="hi", metadata=metadata)
    assert raised.value.status_code == 400
    assert expected_message in str(raised.value)
    assert list(client.messages.list(thread.id)) == []


def test_metadata_at_the_limits_is_accepted(client: AgentsClient) -> None:
    metadata = {f"{n:02d}" + "k" * 62: "v" * 512 for n in range(16)}
    thread = client.threads.create(metadata=metadata)
    assert client.threads.get(thread.id).metadata == metadata


# --- auth, api-version, unimplemented routes ------------------------------------------------


def test_missing_auth_is_401(emulator: EmulatorServer, endpoint: str) -> None:
    raw = requests.post(f"{endpoint}/threads", json={}, params={"api-version": "v1"}, timeout=5)
    assert raw.status_code == 401
    assert "Access denied" in wire_error(raw)["message"]

    with make_client(endpoint, authentication_policy=NoAuthPolicy()) as unauthenticated:
        with pytest.raises(ClientAuthenticationError):
            unauthenticated.threads.create()

    assert api_requests(emulator)["by_auth"] == {"missing": 2}


def test_api_key_header_is_accepted_and_never_echoed(
    emulator: EmulatorServer, endpoint: str
) -> None:
    key_policy = AzureKeyCredentialPolicy(AzureKeyCredential("secret-key-value"), "api-key")
    with make_client(endpoint, authentication_policy=key_policy) as key_client:
        thread = key_client.threads.create()
        assert key_client.threads.get(thread.id).id == thread.id

    state = control(emulator, "GET", "/state").text
    assert json.loads(state)["requests"]["by_auth"] == {"api-key": 2}
    assert "secret-key-value" not in state


def test_missing_api_version_is_400(endpoint: str) -> None:
    raw = requests.post(
        f"{endpoint}/threads", json={}, headers={"Authorization": "Bearer x"}, timeout=5
    )
    assert raw.status_code == 400
    assert "api-version" in wire_error(raw)["message"]


def test_runs_are_not_implemented(client: AgentsClient) -> None:
    thread = client.threads.create()
    with pytest.raises(HttpResponseError) as raised:
        client.runs.create(thread.id, agent_id="asst_anything")
    assert raised.value.status_code == 501
    assert "does not implement" in str(raised.value)


# --- fault knobs ---------------------------------------------------------------------------


def test_latency_delays_every_api_request(emulator: EmulatorServer, client: AgentsClient) -> None:
    thread = client.threads.create()
    emulator.state.latency_ms = 150

    started = time.monotonic()
    client.threads.get(thread.id)

    assert time.monotonic() - started >= 0.15


def test_error_rate_with_seed_is_deterministic(
    emulator: EmulatorServer, client: AgentsClient
) -> None:
    thread = client.threads.create()

    def failures() -> list[bool]:
        outcomes = []
        for _ in range(30):
            try:
                client.threads.get(thread.id)
                outcomes.append(False)
            except HttpResponseError as error:
                assert error.status_code == 500
                outcomes.append(True)
        return outcomes

    emulator.state.configure_faults(error_rate=0.5, seed=1234)
    first_run = failures()
    emulator.state.configure_faults(seed=1234)
    second_run = failures()

    assert first_run == second_run
    assert 0 < sum(first_run) < 30


def test_throttle_next_answers_429_with_retry_after(
    emulator: EmulatorServer, client: AgentsClient
) -> None:
    thread = client.threads.create()
    emulator.state.configure_faults(throttle_next=2, retry_after_s=7)

    for _ in range(2):
        with pytest.raises(HttpResponseError) as raised:
            client.threads.get(thread.id)
        assert raised.value.status_code == 429
        assert raised.value.response.headers["Retry-After"] == "7"
        assert "Rate limit" in str(raised.value)

    assert client.threads.get(thread.id).id == thread.id
    assert emulator.state.throttle_next == 0


def test_sdk_retry_policy_retries_a_throttled_post(emulator: EmulatorServer, endpoint: str) -> None:
    # azure-core retries POST only on 500/503/504 - unless the answer carries Retry-After,
    # which makes any method retryable. So a throttled create is retried.
    emulator.state.configure_faults(throttle_next=2, retry_after_s=0)
    with make_client(endpoint, retry_total=3, retry_backoff_factor=0.01) as retrying:
        thread = retrying.threads.create()
    assert thread.id.startswith("thread_")
    assert api_requests(emulator)["by_status"] == {"429": 2, "200": 1}


def test_fail_next_answers_500(emulator: EmulatorServer, client: AgentsClient) -> None:
    emulator.state.fail_next = 1
    with pytest.raises(HttpResponseError) as raised:
        client.threads.create()
    assert raised.value.status_code == 500
    assert client.threads.create().id.startswith("thread_")
    assert control(emulator, "GET", "/state").json()["store"]["threads"] == 1


def test_drop_next_closes_the_connection_without_a_response(
    emulator: EmulatorServer, client: AgentsClient
) -> None:
    thread = client.threads.create()
    emulator.state.drop_next = 1

    with pytest.raises(ServiceResponseError):
        client.messages.create(thread.id, role="user", content="lost")

    assert list(client.messages.list(thread.id)) == []
    assert api_requests(emulator)["by_status"] == {"200": 2, "dropped": 1}


def test_out_of_band_thread_loss_is_404(emulator: EmulatorServer, client: AgentsClient) -> None:
    thread = client.threads.create()

    removed = control(emulator, "DELETE", f"/threads/{thread.id}")

    assert removed.json() == {"id": thread.id, "deleted": True}
    with pytest.raises(ResourceNotFoundError):
        client.threads.get(thread.id)
    with pytest.raises(ResourceNotFoundError):
        client.messages.create(thread.id, role="user", content="hi")
    assert control(emulator, "DELETE", f"/threads/{thread.id}").status_code == 404


def test_knobs_flip_at_runtime_over_http(emulator: EmulatorServer, client: AgentsClient) -> None:
    thread = client.threads.create()

    flipped = control(emulator, "POST", "/faults", json={"throttle_next": 1, "retry_after_s": 3})

    assert flipped.status_code == 200
    assert flipped.json()["faults"]["throttle_next"] == 1
    with pytest.raises(HttpResponseError) as raised:
        client.threads.get(thread.id)
    assert raised.value.status_code == 429
    assert raised.value.response.headers["Retry-After"] == "3"
    assert control(emulator, "GET", "/state").json()["faults"]["throttle_next"] == 0


@pytest.mark.parametrize(
    "knobs",
    [{"error_rate": 1.5}, {"drop_next": -1}, {"latency_ms": "slow"}, {"no_such_knob": 1}],
)
def test_bad_knobs_are_refused_and_change_nothing(
    emulator: EmulatorServer, knobs: dict[str, Any]
) -> None:
    response = control(emulator, "POST", "/faults", json={"fail_next": 1, **knobs})
    assert response.status_code == 400
    assert wire_error(response)["message"]
    assert emulator.state.fail_next == 0


def test_reset_clears_faults_and_counters_and_optionally_data(
    emulator: EmulatorServer, client: AgentsClient
) -> None:
    client.threads.create()
    control(emulator, "POST", "/faults", json={"fail_next": 5, "latency_ms": 10})

    kept = control(emulator, "POST", "/reset").json()
    assert kept["faults"]["fail_next"] == 0 and kept["faults"]["latency_ms"] == 0
    assert kept["requests"]["total"] == 0
    assert kept["store"]["threads"] == 1

    cleared = control(emulator, "POST", "/reset", params={"data": "1"}).json()
    assert cleared["store"] == {"path": None, "threads": 0, "messages": 0}


def test_control_messages_endpoint_lists_everything_in_order(
    emulator: EmulatorServer, client: AgentsClient
) -> None:
    thread = client.threads.create()
    for number in range(120):
        client.messages.create(thread.id, role="user", content=str(number))

    listed = control(emulator, "GET", f"/threads/{thread.id}/messages").json()

    assert [item["content"][0]["text"]["value"] for item in listed["data"]] == [
        str(number) for number in range(120)
    ]
    assert control(emulator, "GET", "/threads/thread_unknown/messages").status_code == 404


def test_request_counters_include_faulted_requests(
    emulator: EmulatorServer, client: AgentsClient
) -> None:
    thread = client.threads.create()
    emulator.state.fail_next = 1
    with pytest.raises(HttpResponseError):
        client.threads.get(thread.id)
    client.threads.get(thread.id)
    list(client.messages.list(thread.id))
    control(emulator, "GET", "/state")  # control requests are not counted

    counted = api_requests(emulator)

    assert counted["total"] == 4
    assert counted["by_route"] == {
        f"POST {THREADS_ROUTE}": 1,
        f"GET {THREAD_ROUTE}": 2,
        f"GET {MESSAGES_ROUTE}": 1,
    }
    assert counted["by_status"] == {"200": 3, "500": 1}
    assert counted["by_auth"] == {"bearer": 4}


def test_requests_refused_client_side_never_reach_the_emulator(
    emulator: EmulatorServer, endpoint: str
) -> None:
    # Without the enforce_https opt-out, azure-core refuses to send a bearer token over http.
    with make_client(endpoint, per_call_policies=[]) as strict_client:
        with pytest.raises(ServiceRequestError, match="non-TLS"):
            strict_client.threads.create()

    assert api_requests(emulator)["total"] == 0


# --- file store ----------------------------------------------------------------------------


def test_file_store_survives_a_restart(tmp_path: Path) -> None:
    store_path = tmp_path / "emulator.json"
    with EmulatorServer(EmulatorState(store_path=store_path)) as first:
        with make_client(first.project_endpoint(PROJECT)) as writer:
            thread = writer.threads.create(metadata={"session": "s-9"})
            for number in range(3):
                writer.messages.create(thread.id, role="user", content=f"turn {number}")

    with EmulatorServer(EmulatorState(store_path=store_path)) as second:
        with make_client(second.project_endpoint(PROJECT)) as reader:
            assert reader.threads.get(thread.id).metadata == {"session": "s-9"}
            listed = reader.messages.list(thread.id, order="asc")
            assert [m.text_messages[0].text.value for m in listed] == ["turn 0", "turn 1", "turn 2"]
            reader.messages.create(thread.id, role="assistant", content="after restart")

    assert [path.name for path in tmp_path.iterdir()] == ["emulator.json"]  # no temp files left
    assert EmulatorState(store_path=store_path).store.counts() == (1, 4)


def test_foreign_store_file_is_refused(tmp_path: Path) -> None:
    store_path = tmp_path / "other.json"
    store_path.write_text('{"something": "else"}')
    with pytest.raises(ValueError, match="not a version 1 Foundry emulator store"):
        EmulatorState(store_path=store_path)


# --- CLI helpers ---------------------------------------------------------------------------


def test_cli_options_build_the_state(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    store_path = tmp_path / "store.json"

    defaults = vars(parser.parse_args([]))
    options = vars(
        parser.parse_args(
            ["--latency-ms", "25", "--error-rate", "0.2", "--seed", "7", "--store", str(store_path)]
        )
    )
    state = state_from_options(options)

    assert (defaults["host"], defaults["port"], defaults["allow_remote"]) == (
        "127.0.0.1",
        8700,
        False,
    )
    assert state_from_options(defaults).store_path is None
    assert (state.latency_ms, state.error_rate, state.seed) == (25.0, 0.2, 7)
    assert state.store_path == store_path


@pytest.mark.parametrize("argv", [["--error-rate", "1.5"], ["--latency-ms", "-1"]])
def test_cli_rejects_out_of_range_knobs(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)


def test_non_loopback_bind_needs_allow_remote() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind_host(host, allow_remote=False)
    check_bind_host("0.0.0.0", allow_remote=True)
    with pytest.raises(ValueError, match="allow-remote"):
        check_bind_host("0.0.0.0", allow_remote=False)
    with pytest.raises(ValueError, match="allow-remote"):
        run_emulator(host="192.0.2.10", port=0)


RUNNER_SCRIPT = """
import argparse, sys
from foundry_integration.emulator import add_arguments, run_emulator, state_from_options
parser = argparse.ArgumentParser()
add_arguments(parser)
options = vars(parser.parse_args(sys.argv[1:]))
run_emulator(
    host=options["host"],
    port=options["port"],
    allow_remote=options["allow_remote"],
    state=state_from_options(options),
)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_cli_runner_serves_in_another_process(tmp_path: Path) -> None:
    store_path = tmp_path / "store.json"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER_SCRIPT, "--port", str(port), "--store", str(store_path)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"{base_url}/_emulator/state", timeout=1)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        with make_client(f"{base_url}/api/projects/{PROJECT}") as remote:
            thread = remote.threads.create()
            requests.post(f"{base_url}/_emulator/faults", json={"fail_next": 1}, timeout=5)
            with pytest.raises(HttpResponseError) as raised:
                remote.threads.get(thread.id)
            assert raised.value.status_code == 500
    finally:
        process.terminate()
        process.wait(timeout=5)

    assert thread.id in store_path.read_text()


# --- aio client ----------------------------------------------------------------------------


def make_async_client(endpoint: str, **overrides: Any) -> AsyncAgentsClient:
    return AsyncAgentsClient(
        endpoint, AsyncStaticTokenCredential(), **{**CLIENT_OPTIONS, **overrides}
    )


@pytest.mark.asyncio
async def test_async_client_threads_messages_and_paging(endpoint: str) -> None:
    async with make_async_client(endpoint) as client:
        thread = await client.threads.create(metadata={"kind": "async"})
        for number in range(45):
            await client.messages.create(thread.id, role="user", content=f"m{number}")

        ascending = [
            m.text_messages[0].text.value
            async for m in client.messages.list(thread.id, order="asc", limit=10)
        ]
        descending = [m.text_messages[0].text.value async for m in client.messages.list(thread.id)]
        await client.threads.delete(thread.id)
        with pytest.raises(ResourceNotFoundError):
            await client.threads.get(thread.id)

    expected = [f"m{number}" for number in range(45)]
    assert ascending == expected
    assert descending == expected[::-1]


@pytest.mark.asyncio
async def test_async_client_sees_faults(emulator: EmulatorServer, endpoint: str) -> None:
    async with make_async_client(endpoint) as client:
        thread = await client.threads.create()

        emulator.state.configure_faults(throttle_next=1, retry_after_s=2)
        with pytest.raises(HttpResponseError) as raised:
            await client.threads.get(thread.id)
        assert raised.value.status_code == 429
        assert raised.value.response.headers["Retry-After"] == "2"

        # aiohttp reports a dropped connection as ServerDisconnectedError -> ServiceRequestError
        # (the sync requests transport raises ServiceResponseError for the same fault).
        emulator.state.drop_next = 1
        with pytest.raises(ServiceRequestError):
            await client.messages.create(thread.id, role="user", content="lost")

        # aiohttp itself resends an idempotent request (GET, DELETE) once after a drop, so a
        # single drop is invisible to the SDK; two in a row surface.
        emulator.state.drop_next = 1
        assert (await client.threads.get(thread.id)).id == thread.id
        emulator.state.drop_next = 2
        with pytest.raises(ServiceRequestError):
            await client.threads.get(thread.id)

    assert api_requests(emulator)["by_status"] == {"200": 2, "429": 1, "dropped": 4}
