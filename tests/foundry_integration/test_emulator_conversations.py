"""The Foundry conversations emulator, driven by the real azure-ai-projects 2.x clients (sync, aio).

`AIProjectClient.get_openai_client()` hands out an openai client on `{endpoint}/openai/v1` that
sends `Authorization: Bearer <token from the credential>` and no api-version. Plain http needs no
opt-out: the token provider asks the credential directly and never sees the emulator's URL.
Clients are built with `max_retries=0` unless a test is about retries, so each fault maps to
exactly one request.
"""

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from azure.ai.projects import AIProjectClient
from azure.ai.projects.aio import AIProjectClient as AsyncAIProjectClient
from azure.core.credentials import AccessToken

from foundry_integration.emulator import EmulatorServer, EmulatorState

PROJECT = "testproj"
CONVERSATIONS_ROUTE = "/api/projects/{project}/openai/v1/conversations"
CONVERSATION_ROUTE = f"{CONVERSATIONS_ROUTE}/{{conversation_id}}"
ITEMS_ROUTE = f"{CONVERSATION_ROUTE}/items"
AUTH = {"Authorization": "Bearer anything"}
OPENAI_OPTIONS: dict[str, Any] = {"max_retries": 0, "timeout": 10.0}


class StaticTokenCredential:
    """A TokenCredential that always hands out the same token and remembers the scopes asked."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("test-token", int(time.time()) + 3600)


class AsyncStaticTokenCredential:
    """The AsyncTokenCredential counterpart of StaticTokenCredential."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("test-token", int(time.time()) + 3600)

    async def close(self) -> None:
        pass


@contextmanager
def openai_client_for(endpoint: str, **options: Any) -> Iterator[openai.OpenAI]:
    with AIProjectClient(endpoint=endpoint, credential=StaticTokenCredential()) as project:
        with project.get_openai_client(**{**OPENAI_OPTIONS, **options}) as client:
            yield client


@asynccontextmanager
async def async_openai_client_for(
    endpoint: str, **options: Any
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with AsyncAIProjectClient(
        endpoint=endpoint, credential=AsyncStaticTokenCredential()
    ) as project:
        async with project.get_openai_client(**{**OPENAI_OPTIONS, **options}) as client:
            yield client


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
def client(endpoint: str) -> Iterator[openai.OpenAI]:
    with openai_client_for(endpoint) as openai_client:
        yield openai_client


def control(emulator: EmulatorServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{emulator.base_url}/_emulator{path}", timeout=5, **kwargs)


def api_requests(emulator: EmulatorServer) -> dict[str, Any]:
    return control(emulator, "GET", "/state").json()["requests"]


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


def texts(items: Any) -> list[str]:
    return [item.content[0].text for item in items]


def wire_error(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert body == {
        "error": {
            "message": body["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    return body["error"]


# --- client construction -------------------------------------------------------------------


def test_project_client_targets_openai_v1_with_a_bearer_token(
    emulator: EmulatorServer, endpoint: str
) -> None:
    credential = StaticTokenCredential()
    with AIProjectClient(endpoint=endpoint, credential=credential) as project:
        with project.get_openai_client(max_retries=0, timeout=5.0) as client:
            assert str(client.base_url) == f"{endpoint}/openai/v1/"
            client.conversations.create()

    assert credential.scopes == [("https://ai.azure.com/.default",)]
    counted = api_requests(emulator)
    assert counted["by_route"] == {f"POST {CONVERSATIONS_ROUTE}": 1}
    assert counted["by_auth"] == {"bearer": 1}


def test_an_explicit_api_key_is_sent_as_a_bearer_token(
    emulator: EmulatorServer, endpoint: str
) -> None:
    with openai_client_for(endpoint, api_key="secret-key-value") as keyed:
        conversation = keyed.conversations.create()
        assert keyed.conversations.retrieve(conversation.id).id == conversation.id

    state = control(emulator, "GET", "/state").text
    assert json.loads(state)["requests"]["by_auth"] == {"bearer": 2}
    assert "secret-key-value" not in state


# --- conversations -------------------------------------------------------------------------


def test_conversation_create_retrieve_update_delete(client: openai.OpenAI) -> None:
    before = int(time.time())
    conversation = client.conversations.create(
        items=[user("hello")], metadata={"session": "s-1", "user": "alice"}
    )

    assert conversation.id.startswith("conv_")
    assert len(conversation.id) == len("conv_") + 24
    assert conversation.object == "conversation"
    assert before <= conversation.created_at <= int(time.time())
    assert conversation.metadata == {"session": "s-1", "user": "alice"}
    retrieved = client.conversations.retrieve(conversation.id)
    assert retrieved.metadata == {"session": "s-1", "user": "alice"}
    assert texts(client.conversations.items.list(conversation.id)) == ["hello"]

    updated = client.conversations.update(conversation.id, metadata={"title": "renamed"})
    assert updated.metadata == {"title": "renamed"}  # replaced, not merged
    assert client.conversations.retrieve(conversation.id).metadata == {"title": "renamed"}

    deleted = client.conversations.delete(conversation.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (
        conversation.id,
        "conversation.deleted",
        True,
    )
    with pytest.raises(openai.NotFoundError) as raised:
        client.conversations.retrieve(conversation.id)
    assert raised.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.conversations.delete(conversation.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.create(conversation.id, items=[user("late")])
    with pytest.raises(openai.NotFoundError):
        list(client.conversations.items.list(conversation.id))


def test_wire_shapes_without_api_version(endpoint: str) -> None:
    # The OpenAI v1 surface takes no api-version (the threads API still insists on one).
    base = f"{endpoint}/openai/v1/conversations"
    conversation = requests.post(base, json={}, headers=AUTH, timeout=5).json()
    assert conversation == {
        "id": conversation["id"],
        "object": "conversation",
        "created_at": conversation["created_at"],
        "metadata": {},
    }
    created = requests.post(
        f"{base}/{conversation['id']}/items",
        json={
            "items": [
                {"type": "message", "role": "user", "content": "question"},
                {"role": "assistant", "content": "answer"},
                {
                    "type": "message",
                    "role": "system",
                    "content": [{"type": "input_text", "text": "be brief"}],
                },
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "ok", "annotations": []}],
                },
            ]
        },
        headers=AUTH,
        timeout=5,
    ).json()
    items = created["data"]
    assert all(item["id"].startswith("msg_") for item in items)
    assert len({item["id"] for item in items}) == 4
    assert created == {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"],
        "last_id": items[-1]["id"],
        "has_more": False,
    }
    assert [{key: value for key, value in item.items() if key != "id"} for item in items] == [
        {
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": "question"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "answer", "annotations": []}],
        },
        {
            "type": "message",
            "role": "system",
            "status": "completed",
            "content": [{"type": "input_text", "text": "be brief"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "ok", "annotations": []}],
        },
    ]
    deleted = requests.delete(f"{base}/{conversation['id']}", headers=AUTH, timeout=5).json()
    assert deleted == {"id": conversation["id"], "object": "conversation.deleted", "deleted": True}


def test_sdk_parses_items_into_message_models(client: openai.OpenAI) -> None:
    conversation = client.conversations.create()

    created = client.conversations.items.create(
        conversation.id,
        items=[
            {"type": "message", "role": "developer", "content": "rules"},
            {"type": "message", "role": "assistant", "content": "reply"},
        ],
    )

    developer, assistant = created.data
    assert isinstance(developer, openai.types.conversations.Message)
    assert (developer.role, developer.status, developer.type) == (
        "developer",
        "completed",
        "message",
    )
    assert developer.content[0].type == "input_text"
    assert assistant.content[0].type == "output_text"
    assert assistant.content[0].annotations == []
    assert (created.first_id, created.last_id, created.has_more) == (
        developer.id,
        assistant.id,
        False,
    )


def test_conversations_are_stored_per_project(
    emulator: EmulatorServer, client: openai.OpenAI
) -> None:
    conversation = client.conversations.create()
    with openai_client_for(emulator.project_endpoint("otherproj")) as other_project:
        with pytest.raises(openai.NotFoundError):
            other_project.conversations.retrieve(conversation.id)


# --- items ---------------------------------------------------------------------------------


def test_item_batches_are_stored_in_order(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[user("c0"), user("c1")])

    first = client.conversations.items.create(conversation.id, items=[user("a0"), user("a1")])
    second = client.conversations.items.create(
        conversation.id, items=[user(f"b{number}") for number in range(20)]
    )

    assert texts(first.data) == ["a0", "a1"]
    assert texts(second.data) == [f"b{number}" for number in range(20)]
    listed = client.conversations.items.list(conversation.id, order="asc", limit=100)
    assert texts(listed) == ["c0", "c1", "a0", "a1"] + [f"b{number}" for number in range(20)]


def test_listing_250_items_through_sdk_paging_in_both_orders(
    emulator: EmulatorServer, client: openai.OpenAI
) -> None:
    conversation = client.conversations.create()
    expected = [f"item {number:03d}" for number in range(250)]
    for start in range(0, 250, 20):
        client.conversations.items.create(
            conversation.id, items=[user(text) for text in expected[start : start + 20]]
        )

    ascending = texts(client.conversations.items.list(conversation.id, order="asc", limit=100))
    descending = texts(client.conversations.items.list(conversation.id))  # desc, 20 per page

    assert ascending == expected
    assert descending == expected[::-1]
    # The openai SDK follows `after=last_id` while has_more is true: 3 pages asc, 13 desc.
    by_route = api_requests(emulator)["by_route"]
    assert by_route[f"POST {ITEMS_ROUTE}"] == 13
    assert by_route[f"GET {ITEMS_ROUTE}"] == 3 + 13


def test_pages_say_has_more_until_the_window_is_exhausted(
    endpoint: str, client: openai.OpenAI
) -> None:
    conversation = client.conversations.create(items=[user(str(n)) for n in range(3)])
    url = f"{endpoint}/openai/v1/conversations/{conversation.id}/items"

    first = requests.get(url, params={"limit": 2, "order": "asc"}, headers=AUTH, timeout=5).json()
    rest = requests.get(
        url, params={"order": "asc", "after": first["last_id"]}, headers=AUTH, timeout=5
    ).json()
    past_the_end = requests.get(
        url, params={"order": "asc", "after": rest["last_id"]}, headers=AUTH, timeout=5
    ).json()

    assert [item["content"][0]["text"] for item in first["data"]] == ["0", "1"]
    assert first["has_more"] is True
    assert [item["content"][0]["text"] for item in rest["data"]] == ["2"]
    assert rest["has_more"] is False
    assert past_the_end == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


@pytest.mark.parametrize(
    ("list_options", "expected_message"),
    [
        ({"limit": 0}, "Invalid 'limit'"),
        ({"limit": 101}, "Invalid 'limit'"),
        ({"order": "sideways"}, "Invalid 'order'"),
        ({"after": "msg_unknown"}, "Invalid 'after'"),
    ],
)
def test_list_parameters_are_validated(
    client: openai.OpenAI, list_options: dict[str, Any], expected_message: str
) -> None:
    conversation = client.conversations.create(items=[user("only")])
    with pytest.raises(openai.BadRequestError) as raised:
        list(client.conversations.items.list(conversation.id, **list_options))
    assert raised.value.status_code == 400
    assert expected_message in raised.value.message


def test_item_retrieve_and_delete(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[user("keep"), user("drop"), user("keep too")])
    keep, drop, keep_too = client.conversations.items.list(conversation.id, order="asc")

    retrieved = client.conversations.items.retrieve(drop.id, conversation_id=conversation.id)
    after_delete = client.conversations.items.delete(drop.id, conversation_id=conversation.id)

    assert retrieved == drop
    assert after_delete.id == conversation.id and after_delete.object == "conversation"
    listed = client.conversations.items.list(conversation.id, order="asc")
    assert [item.id for item in listed] == [keep.id, keep_too.id]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(drop.id, conversation_id=conversation.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete(drop.id, conversation_id=conversation.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(keep.id, conversation_id="conv_unknown")


def test_more_than_20_items_per_call_is_400_and_stores_nothing(
    emulator: EmulatorServer, client: openai.OpenAI
) -> None:
    twenty_one = [user(str(number)) for number in range(21)]
    conversation = client.conversations.create(items=twenty_one[:20])

    with pytest.raises(openai.BadRequestError) as on_items:
        client.conversations.items.create(conversation.id, items=twenty_one)
    with pytest.raises(openai.BadRequestError) as on_create:
        client.conversations.create(items=twenty_one)

    for raised in (on_items, on_create):
        assert "Invalid 'items': array too long" in raised.value.message
        assert "maximum length 20" in raised.value.message
    assert emulator.state.store.conversation_counts() == (1, 20)


BAD_ITEMS = [
    pytest.param({"role": "tool", "content": "hi"}, "Invalid 'items[1].role'", id="role-tool"),
    pytest.param({"content": "hi"}, "'items[1].role'", id="no-role"),
    pytest.param({"role": "user"}, "'items[1].content'", id="no-content"),
    pytest.param({"role": "user", "content": ""}, "Invalid 'items[1].content'", id="empty-text"),
    pytest.param({"role": "user", "content": []}, "Invalid 'items[1].content'", id="no-parts"),
    pytest.param(
        {"role": "user", "content": [{"type": "output_text", "text": "x"}]},
        "Invalid 'items[1].content[0].type'",
        id="user-output-part",
    ),
    pytest.param(
        {"role": "assistant", "content": [{"type": "input_text", "text": "x"}]},
        "Invalid 'items[1].content[0].type'",
        id="assistant-input-part",
    ),
    pytest.param(
        {"role": "user", "content": [{"type": "input_text", "text": 5}]},
        "Invalid 'items[1].content[0].text'",
        id="non-string-text",
    ),
    pytest.param(
        {"type": "function_call_output", "call_id": "c", "output": "x"},
        "Invalid 'items[1].type'",
        id="not-a-message",
    ),
]


@pytest.mark.parametrize(("bad_item", "expected_message"), BAD_ITEMS)
def test_a_bad_item_fails_the_whole_batch(
    emulator: EmulatorServer,
    client: openai.OpenAI,
    bad_item: dict[str, Any],
    expected_message: str,
) -> None:
    conversation = client.conversations.create()
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.create(conversation.id, items=[user("fine"), bad_item])
    assert expected_message in raised.value.message
    assert emulator.state.store.items_anywhere(conversation.id) == []


def test_bad_bodies_are_400_with_the_openai_error_shape(
    endpoint: str, client: openai.OpenAI
) -> None:
    conversation = client.conversations.create()
    url = f"{endpoint}/openai/v1/conversations/{conversation.id}"

    bad_json = requests.post(f"{url}/items", data=b"{not json", headers=AUTH, timeout=5)
    no_items = requests.post(f"{url}/items", json={}, headers=AUTH, timeout=5)
    no_metadata = requests.post(url, json={}, headers=AUTH, timeout=5)

    assert bad_json.status_code == 400
    assert "not valid JSON" in wire_error(bad_json)["message"]
    assert no_items.status_code == 400
    assert wire_error(no_items)["message"] == "Missing required parameter: 'items'."
    assert no_metadata.status_code == 400
    assert wire_error(no_metadata)["message"] == "Missing required parameter: 'metadata'."


def test_unknown_conversation_is_404_before_the_body_is_checked(endpoint: str) -> None:
    response = requests.post(
        f"{endpoint}/openai/v1/conversations/conv_unknown/items",
        json={"items": "not a list"},
        headers=AUTH,
        timeout=5,
    )
    assert response.status_code == 404
    assert wire_error(response)["message"] == "Conversation with id 'conv_unknown' not found."


# --- metadata limits -----------------------------------------------------------------------

BAD_METADATA = [
    pytest.param({f"k{n}": "v" for n in range(17)}, "at most 16 properties", id="17-pairs"),
    pytest.param({"k" * 65: "v"}, "key too long", id="65-char-key"),
    pytest.param({"k": "v" * 513}, "maximum length 512", id="513-char-value"),
    pytest.param({"k": 5}, "expected a string", id="non-string-value"),
]


@pytest.mark.parametrize(("metadata", "expected_message"), BAD_METADATA)
def test_metadata_limits_on_create(
    emulator: EmulatorServer,
    client: openai.OpenAI,
    metadata: dict[str, Any],
    expected_message: str,
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.create(metadata=metadata)
    assert raised.value.status_code == 400
    assert expected_message in raised.value.message
    assert emulator.state.store.conversation_counts() == (0, 0)


@pytest.mark.parametrize(("metadata", "expected_message"), BAD_METADATA)
def test_metadata_limits_on_update(
    client: openai.OpenAI, metadata: dict[str, Any], expected_message: str
) -> None:
    conversation = client.conversations.create(metadata={"kept": "yes"})
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.update(conversation.id, metadata=metadata)
    assert expected_message in raised.value.message
    assert client.conversations.retrieve(conversation.id).metadata == {"kept": "yes"}


def test_metadata_at_the_limits_is_accepted_and_null_clears_it(client: openai.OpenAI) -> None:
    metadata = {f"{n:02d}" + "k" * 62: "v" * 512 for n in range(16)}
    conversation = client.conversations.create(metadata=metadata)
    assert client.conversations.retrieve(conversation.id).metadata == metadata

    assert client.conversations.update(conversation.id, metadata=None).metadata == {}


# --- auth and unimplemented routes ---------------------------------------------------------


def test_missing_auth_is_401(
    emulator: EmulatorServer, endpoint: str, client: openai.OpenAI
) -> None:
    raw = requests.post(f"{endpoint}/openai/v1/conversations", json={}, timeout=5)
    assert raw.status_code == 401
    assert "Access denied" in wire_error(raw)["message"]

    with pytest.raises(openai.AuthenticationError) as raised:
        client.conversations.create(extra_headers={"Authorization": openai.omit})
    assert raised.value.status_code == 401

    assert api_requests(emulator)["by_auth"] == {"missing": 2}
    assert emulator.state.store.conversation_counts() == (0, 0)


def test_unimplemented_routes_are_501_and_not_retried(
    emulator: EmulatorServer, endpoint: str
) -> None:
    # Default retries on: openai retries 5xx, but the 501 says `x-should-retry: false`.
    with openai_client_for(endpoint, max_retries=2) as retrying:
        with pytest.raises(openai.InternalServerError) as raised:
            retrying.responses.create(model="any", input="hi")
    assert raised.value.status_code == 501
    assert "does not implement" in raised.value.message
    assert api_requests(emulator)["total"] == 1


# --- fault knobs ---------------------------------------------------------------------------


def test_latency_delays_requests_and_trips_client_timeouts(
    emulator: EmulatorServer, client: openai.OpenAI
) -> None:
    conversation = client.conversations.create()
    emulator.state.latency_ms = 150

    started = time.monotonic()
    client.conversations.retrieve(conversation.id)
    assert time.monotonic() - started >= 0.15

    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.05).conversations.retrieve(conversation.id)

    # The emulator still answers the abandoned request; wait for it so it cannot land in (and be
    # counted by) the next test.
    deadline = time.monotonic() + 5
    while (counted := api_requests(emulator))["by_status"].get("200") != 3:
        assert time.monotonic() < deadline, counted
        time.sleep(0.02)


def test_throttle_next_answers_429_with_retry_after(
    emulator: EmulatorServer, client: openai.OpenAI
) -> None:
    conversation = client.conversations.create()
    emulator.state.configure_faults(throttle_next=2, retry_after_s=7)

    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as raised:
            client.conversations.items.create(conversation.id, items=[user("throttled")])
        assert raised.value.status_code == 429
        assert raised.value.response.headers["Retry-After"] == "7"
        assert "Rate limit" in raised.value.message

    assert client.conversations.items.create(conversation.id, items=[user("ok")]).data
    assert emulator.state.store.conversation_counts() == (1, 1)


def test_fault_knobs_count_across_both_surfaces(
    emulator: EmulatorServer, endpoint: str, client: openai.OpenAI
) -> None:
    conversation = client.conversations.create()
    emulator.state.configure_faults(throttle_next=2, retry_after_s=4)

    thread_call = requests.post(
        f"{endpoint}/threads", json={}, headers=AUTH, params={"api-version": "v1"}, timeout=5
    )
    with pytest.raises(openai.RateLimitError):
        client.conversations.retrieve(conversation.id)

    assert thread_call.status_code == 429
    assert thread_call.headers["Retry-After"] == "4"
    assert client.conversations.retrieve(conversation.id).id == conversation.id
    assert emulator.state.throttle_next == 0


def test_default_openai_retries_honour_retry_after(emulator: EmulatorServer, endpoint: str) -> None:
    emulator.state.configure_faults(throttle_next=1, retry_after_s=1)
    with openai_client_for(endpoint, max_retries=2) as retrying:
        started = time.monotonic()
        conversation = retrying.conversations.create()  # POST, still retried by openai
        elapsed = time.monotonic() - started

    assert conversation.id.startswith("conv_")
    assert elapsed >= 1.0
    assert api_requests(emulator)["by_status"] == {"429": 1, "200": 1}


def test_fail_next_answers_500_and_stores_nothing(
    emulator: EmulatorServer, client: openai.OpenAI
) -> None:
    emulator.state.fail_next = 1
    with pytest.raises(openai.InternalServerError) as raised:
        client.conversations.create(items=[user("lost")])
    assert raised.value.status_code == 500
    assert "fail_next" in raised.value.message
    assert emulator.state.store.conversation_counts() == (0, 0)
    assert client.conversations.create().id.startswith("conv_")


def test_error_rate_with_seed_is_deterministic(
    emulator: EmulatorServer, client: openai.OpenAI
) -> None:
    conversation = client.conversations.create()

    def failures() -> list[bool]:
        outcomes = []
        for _ in range(20):
            try:
                client.conversations.retrieve(conversation.id)
                outcomes.append(False)
            except openai.InternalServerError:
                outcomes.append(True)
        return outcomes

    emulator.state.configure_faults(error_rate=0.5, seed=99)
    first_run = failures()
    emulator.state.configure_faults(seed=99)
    second_run = failures()

    assert first_run == second_run
    assert 0 < sum(first_run) < 20


def test_drop_next_is_a_connection_error(emulator: EmulatorServer, client: openai.OpenAI) -> None:
    conversation = client.conversations.create()
    emulator.state.drop_next = 1

    with pytest.raises(openai.APIConnectionError) as raised:
        client.conversations.items.create(conversation.id, items=[user("lost")])

    assert not isinstance(raised.value, openai.APITimeoutError)
    assert list(client.conversations.items.list(conversation.id)) == []
    assert api_requests(emulator)["by_status"] == {"200": 2, "dropped": 1}


def test_knobs_flip_at_runtime_over_http(emulator: EmulatorServer, client: openai.OpenAI) -> None:
    conversation = client.conversations.create()

    flipped = control(emulator, "POST", "/faults", json={"throttle_next": 1, "retry_after_s": 3})

    assert flipped.status_code == 200
    with pytest.raises(openai.RateLimitError) as raised:
        client.conversations.retrieve(conversation.id)
    assert raised.value.response.headers["Retry-After"] == "3"
    assert control(emulator, "GET", "/state").json()["faults"]["throttle_next"] == 0


# --- control endpoints and counters ---------------------------------------------------------


def test_out_of_band_conversation_loss_is_404(
    emulator: EmulatorServer, client: openai.OpenAI
) -> None:
    conversation = client.conversations.create(items=[user("hi")])

    removed = control(emulator, "DELETE", f"/conversations/{conversation.id}")

    assert removed.json() == {"id": conversation.id, "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conversation.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.create(conversation.id, items=[user("again")])
    assert control(emulator, "DELETE", f"/conversations/{conversation.id}").status_code == 404
    assert control(emulator, "GET", f"/conversations/{conversation.id}/items").status_code == 404


def test_control_items_endpoint_lists_everything_in_order(
    emulator: EmulatorServer, client: openai.OpenAI
) -> None:
    conversation = client.conversations.create()
    for start in range(0, 120, 20):
        client.conversations.items.create(
            conversation.id, items=[user(str(number)) for number in range(start, start + 20)]
        )

    listed = control(emulator, "GET", f"/conversations/{conversation.id}/items").json()

    assert listed["object"] == "list" and listed["conversation_id"] == conversation.id
    assert [item["content"][0]["text"] for item in listed["data"]] == [
        str(number) for number in range(120)
    ]


def test_counters_and_reset_cover_conversations(
    emulator: EmulatorServer, client: openai.OpenAI
) -> None:
    conversation = client.conversations.create(items=[user("a"), user("b")])
    emulator.state.fail_next = 1
    with pytest.raises(openai.InternalServerError):
        client.conversations.retrieve(conversation.id)
    client.conversations.retrieve(conversation.id)
    list(client.conversations.items.list(conversation.id))

    state = control(emulator, "GET", "/state").json()

    assert state["requests"]["by_route"] == {
        f"POST {CONVERSATIONS_ROUTE}": 1,
        f"GET {CONVERSATION_ROUTE}": 2,
        f"GET {ITEMS_ROUTE}": 1,
    }
    assert state["requests"]["by_status"] == {"200": 3, "500": 1}
    assert state["conversations"] == {"conversations": 1, "items": 2}
    assert state["store"] == {"path": None, "threads": 0, "messages": 0}
    kept = control(emulator, "POST", "/reset").json()
    assert kept["conversations"] == {"conversations": 1, "items": 2}
    cleared = control(emulator, "POST", "/reset", params={"data": "1"}).json()
    assert cleared["conversations"] == {"conversations": 0, "items": 0}


# --- file store ----------------------------------------------------------------------------


def test_file_store_keeps_conversations_across_a_restart(tmp_path: Path) -> None:
    store_path = tmp_path / "emulator.json"
    with EmulatorServer(EmulatorState(store_path=store_path)) as first:
        with openai_client_for(first.project_endpoint(PROJECT)) as writer:
            conversation = writer.conversations.create(
                items=[user("turn 0")], metadata={"session": "s-9"}
            )
            writer.conversations.items.create(conversation.id, items=[user("turn 1")])
        thread_id = first.state.store.create_thread(
            PROJECT, metadata={}, tool_resources={}, messages=[]
        )["id"]

    with EmulatorServer(EmulatorState(store_path=store_path)) as second:
        with openai_client_for(second.project_endpoint(PROJECT)) as reader:
            assert reader.conversations.retrieve(conversation.id).metadata == {"session": "s-9"}
            listed = reader.conversations.items.list(conversation.id, order="asc")
            assert texts(listed) == ["turn 0", "turn 1"]
            reader.conversations.items.create(conversation.id, items=[user("after restart")])
        assert second.state.store.get_thread(PROJECT, thread_id)["id"] == thread_id

    assert [path.name for path in tmp_path.iterdir()] == ["emulator.json"]  # no temp files left
    reloaded = EmulatorState(store_path=store_path).store
    assert reloaded.conversation_counts() == (1, 3)
    assert reloaded.counts() == (1, 0)


def test_store_file_from_before_conversations_still_loads(tmp_path: Path) -> None:
    store_path = tmp_path / "old.json"
    store_path.write_text(
        json.dumps({"format": "foundry-emulator-store", "version": 1, "projects": {}})
    )

    store = EmulatorState(store_path=store_path).store
    conversation = store.create_conversation(PROJECT, metadata={}, items=[])

    assert store.conversation_counts() == (1, 0)
    saved = json.loads(store_path.read_text())
    assert conversation["id"] in saved["conversations"][PROJECT]


# --- aio client ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_client_conversations_items_and_paging(
    emulator: EmulatorServer, endpoint: str
) -> None:
    expected = [f"m{number:03d}" for number in range(250)]
    async with async_openai_client_for(endpoint) as client:
        conversation = await client.conversations.create(metadata={"kind": "async"})
        for start in range(0, 250, 20):
            await client.conversations.items.create(
                conversation.id, items=[user(text) for text in expected[start : start + 20]]
            )

        ascending = [
            item.content[0].text
            async for item in client.conversations.items.list(
                conversation.id, order="asc", limit=100
            )
        ]
        descending = [
            item.content[0].text async for item in client.conversations.items.list(conversation.id)
        ]
        updated = await client.conversations.update(conversation.id, metadata={"kind": "done"})
        await client.conversations.delete(conversation.id)
        with pytest.raises(openai.NotFoundError):
            await client.conversations.retrieve(conversation.id)

    assert ascending == expected
    assert descending == expected[::-1]
    assert updated.metadata == {"kind": "done"}
    assert api_requests(emulator)["by_route"][f"GET {ITEMS_ROUTE}"] == 3 + 13


@pytest.mark.asyncio
async def test_async_client_sees_faults(emulator: EmulatorServer, endpoint: str) -> None:
    async with async_openai_client_for(endpoint) as client:
        conversation = await client.conversations.create()

        emulator.state.configure_faults(throttle_next=1, retry_after_s=2)
        with pytest.raises(openai.RateLimitError) as raised:
            await client.conversations.retrieve(conversation.id)
        assert raised.value.response.headers["Retry-After"] == "2"

        emulator.state.fail_next = 1
        with pytest.raises(openai.InternalServerError):
            await client.conversations.items.create(conversation.id, items=[user("x")])

        # httpx does not resend idempotent requests, so unlike the aiohttp-based azure-core
        # transport a single drop surfaces on a GET as well as on a POST.
        emulator.state.drop_next = 1
        with pytest.raises(openai.APIConnectionError):
            await client.conversations.retrieve(conversation.id)
        emulator.state.drop_next = 1
        with pytest.raises(openai.APIConnectionError):
            await client.conversations.items.create(conversation.id, items=[user("lost")])

        control(emulator, "DELETE", f"/conversations/{conversation.id}")
        with pytest.raises(openai.NotFoundError):
            await client.conversations.items.create(conversation.id, items=[user("gone")])

    assert api_requests(emulator)["by_status"] == {
        "200": 1,
        "429": 1,
        "500": 1,
        "dropped": 2,
        "404": 1,
    }
