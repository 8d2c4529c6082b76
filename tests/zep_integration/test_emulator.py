"""The Zep emulator, driven by the real zep-cloud (v4) and zep-python (v2) clients, sync and async.

No mocks: every test talks HTTP to an emulator on a loopback port. zep-cloud clients are built
with `max_retries=0` unless a test is about retries (zep-python never retries unless asked), so
each fault maps to exactly one request.
"""

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from zep_cloud import AddMessage
from zep_cloud import AsyncZep as AsyncCloudZep
from zep_cloud import Zep as CloudZep
from zep_cloud.core.api_error import ApiError as CloudApiError
from zep_cloud.errors import BadRequestError as CloudBadRequestError
from zep_cloud.errors import ConflictError as CloudConflictError
from zep_cloud.errors import NotFoundError as CloudNotFoundError
from zep_cloud.errors import UnauthorizedError as CloudUnauthorizedError
from zep_python import Message as CommunityMessage
from zep_python.client import AsyncZep as AsyncCommunityZep
from zep_python.client import Zep as CommunityZep
from zep_python.core.api_error import ApiError as CommunityApiError
from zep_python.errors import BadRequestError as CommunityBadRequestError
from zep_python.errors import InternalServerError as CommunityInternalServerError
from zep_python.errors import NotFoundError as CommunityNotFoundError

from zep_integration.emulator import (
    ZepEmulatorServer,
    ZepEmulatorState,
    add_arguments,
    check_bind_host,
    run_emulator,
    state_from_options,
)

API_KEY = "test-api-key-value"
TIMEOUT_S = 5
CLOUD_MESSAGES_ROUTE = "/api/v4/threads/{thread_uuid}/messages"
COMMUNITY_MESSAGES_ROUTE = "/api/v2/sessions/{session_id}/messages"


@pytest.fixture(scope="module")
def emulator() -> Iterator[ZepEmulatorServer]:
    with ZepEmulatorServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_emulator(emulator: ZepEmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator.state.reset(clear_data=True)
    # zep-python prefers ZEP_API_URL over its base_url argument; a developer's shell must not
    # point the tests elsewhere.
    monkeypatch.delenv("ZEP_API_URL", raising=False)


def make_cloud(emulator: ZepEmulatorServer, **overrides: Any) -> CloudZep:
    options = {"api_key": API_KEY, "base_url": emulator.cloud_base_url, "max_retries": 0}
    return CloudZep(**{**options, "timeout": TIMEOUT_S, **overrides})


def make_community(emulator: ZepEmulatorServer, **overrides: Any) -> CommunityZep:
    options = {"api_key": API_KEY, "base_url": emulator.base_url, "timeout": TIMEOUT_S}
    return CommunityZep(**{**options, **overrides})


@pytest.fixture
def cloud(emulator: ZepEmulatorServer) -> CloudZep:
    return make_cloud(emulator)


@pytest.fixture
def community(emulator: ZepEmulatorServer) -> CommunityZep:
    return make_community(emulator)


def control(emulator: ZepEmulatorServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{emulator.base_url}/_emulator{path}", timeout=5, **kwargs)


def api_requests(emulator: ZepEmulatorServer) -> dict[str, Any]:
    return control(emulator, "GET", "/state").json()["requests"]


def cloud_thread(cloud: CloudZep, user_id: str = "alice") -> str:
    """A new user and thread; returns the thread uuid."""
    user = cloud.user.create(user_id=user_id)
    return cloud.thread.create(user_uuid=user.uuid_).uuid_


def turns(count: int, *, start: int = 0) -> list[AddMessage]:
    return [
        AddMessage(
            role="user" if number % 2 == 0 else "assistant",
            name="Alice" if number % 2 == 0 else "Bot",
            content=f"turn {number:03d}",
            metadata={"turn": number},
        )
        for number in range(start, start + count)
    ]


def community_turns(count: int, *, start: int = 0) -> list[CommunityMessage]:
    return [
        CommunityMessage(
            role="Alice" if number % 2 == 0 else "Bot",
            role_type="user" if number % 2 == 0 else "assistant",
            content=f"turn {number:03d}",
            metadata={"turn": number},
        )
        for number in range(start, start + count)
    ]


def in_batches(count: int, size: int = 30) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(size, count - start)


EXPECTED_250 = [f"turn {number:03d}" for number in range(250)]


# --- zep-cloud v4 ---------------------------------------------------------------------------


def test_cloud_full_lifecycle(emulator: ZepEmulatorServer, cloud: CloudZep) -> None:
    user = cloud.user.create(user_id="alice", first_name="Alice", metadata={"plan": "pro"})
    assert cloud.user.get(user.uuid_).user_id == "alice"
    thread = cloud.thread.create(user_uuid=user.uuid_)
    assert (thread.user_uuid, thread.graph_uuid, thread.thread_id) == (
        user.uuid_,
        user.graph_uuid,
        None,
    )
    assert cloud.thread.get(thread.uuid_).uuid_ == thread.uuid_

    for start, count in in_batches(250):
        added = cloud.thread.add_messages(thread.uuid_, messages=turns(count, start=start))
        assert [m.content for m in added.messages] == EXPECTED_250[start : start + count]
        assert added.task.status == "succeeded"
        assert added.context is None

    listed = list(cloud.thread.list_messages(thread.uuid_, page_size=100))

    assert [m.content for m in listed] == EXPECTED_250
    assert len({m.uuid_ for m in listed}) == 250
    assert (listed[1].role, listed[1].name, listed[1].metadata) == ("assistant", "Bot", {"turn": 1})
    assert all(m.thread_uuid == thread.uuid_ and m.processed for m in listed)
    # next_cursor is left out on the last page, so the pager stops there: 100 + 100 + 50.
    assert api_requests(emulator)["by_route"][f"GET {CLOUD_MESSAGES_ROUTE}"] == 3
    assert "turn 249" in cloud.thread.get_context(thread.uuid_).context

    deleted = cloud.thread.delete(thread.uuid_)
    assert deleted.task.status == "succeeded"
    assert cloud.task.get(deleted.task.uuid_).type == "delete_thread"
    with pytest.raises(CloudNotFoundError):
        cloud.thread.get(thread.uuid_)
    with pytest.raises(CloudNotFoundError):
        list(cloud.thread.list_messages(thread.uuid_))
    with pytest.raises(CloudNotFoundError):
        cloud.thread.add_messages(thread.uuid_, messages=turns(1))
    cloud.user.delete(user.uuid_)
    with pytest.raises(CloudNotFoundError) as raised:
        cloud.user.get(user.uuid_)
    assert raised.value.body.error.code == "not_found"


def test_cloud_status_codes_and_wire_shapes(emulator: ZepEmulatorServer, cloud: CloudZep) -> None:
    created = cloud.user.with_raw_response.create(user_id="bob")
    assert created.status_code == 201
    user = created.data
    thread = cloud.thread.with_raw_response.create(user_uuid=user.uuid_)
    assert thread.status_code == 201
    added = cloud.thread.with_raw_response.add_messages(
        thread.data.uuid_, messages=turns(1), return_context=True
    )
    assert added.status_code == 202
    assert added.data.context.startswith("<RECENT_MESSAGES>")

    raw_message = added.response.json()["messages"][0]
    assert set(raw_message) == {
        "uuid",
        "thread_uuid",
        "role",
        "name",
        "content",
        "metadata",
        "created_at",
        "reference_time",
        "processed",
    }
    assert raw_message["reference_time"] == raw_message["created_at"]
    assert raw_message["created_at"].endswith("Z")
    page = httpx.get(
        f"{emulator.cloud_base_url}/threads/{thread.data.uuid_}/messages",
        headers={"Authorization": f"Api-Key {API_KEY}"},
    ).json()
    assert set(page) == {"items", "total_size"}  # no next_cursor on the last page
    deleted = cloud.user.with_raw_response.delete(user.uuid_)
    assert deleted.status_code == 202
    with pytest.raises(CloudNotFoundError):  # deleting a user deletes its threads
        cloud.thread.get(thread.data.uuid_)


def test_cloud_paging_descending_and_parameter_checks(cloud: CloudZep) -> None:
    thread_uuid = cloud_thread(cloud)
    cloud.thread.add_messages(thread_uuid, messages=turns(20))

    descending = list(cloud.thread.list_messages(thread_uuid, page_size=7, order="desc"))
    first_page = cloud.thread.list_messages(thread_uuid, page_size=7)

    assert [m.content for m in descending] == [f"turn {n:03d}" for n in range(19, -1, -1)]
    assert [m.content for m in first_page.items] == [f"turn {n:03d}" for n in range(7)]
    assert first_page.response.total_size == 20
    for bad in ({"page_size": 0}, {"page_size": 201}, {"cursor": "not-a-cursor"}):
        with pytest.raises(CloudBadRequestError):
            cloud.thread.list_messages(thread_uuid, **bad)
    # A cursor is bound to its order.
    with pytest.raises(CloudBadRequestError) as raised:
        cloud.thread.list_messages(
            thread_uuid, order="desc", cursor=first_page.response.next_cursor
        )
    assert raised.value.body.error.param == "cursor"


def test_cloud_user_id_is_unique_and_resolvable(cloud: CloudZep) -> None:
    user = cloud.user.create(user_id="carol")

    with pytest.raises(CloudConflictError):
        cloud.user.create(user_id="carol")
    assert cloud.user.lookup(user_id="carol").uuid_ == user.uuid_
    with pytest.raises(CloudNotFoundError):
        cloud.user.lookup(user_id="nobody")
    with pytest.raises(CloudBadRequestError):
        cloud.user.lookup(graph_id="some-graph")


def test_thread_for_unknown_user_is_404(cloud: CloudZep) -> None:
    with pytest.raises(CloudNotFoundError):
        cloud.thread.create(user_uuid="00000000-0000-4000-8000-000000000000")


BAD_CLOUD_MESSAGES = [
    pytest.param(AddMessage(role="user", content="x" * 2501), "content", id="2501-chars"),
    pytest.param(AddMessage(role="user", content=""), "content", id="empty-content"),
    pytest.param(
        AddMessage(role="user", content="x", metadata={f"k{n}": n for n in range(11)}),
        "metadata",
        id="11-metadata-keys",
    ),
    pytest.param(
        AddMessage(role="user", content="x", metadata={"nested": {"a": 1}}),
        "metadata.nested",
        id="nested-metadata",
    ),
    pytest.param(AddMessage(role="robot", content="x"), "role", id="bad-role"),
    pytest.param(
        AddMessage(role="user", content="x", reference_time="yesterday"),
        "reference_time",
        id="bad-reference-time",
    ),
]


@pytest.mark.parametrize(("bad_message", "field"), BAD_CLOUD_MESSAGES)
def test_one_bad_message_rejects_the_whole_batch(
    cloud: CloudZep, bad_message: AddMessage, field: str
) -> None:
    thread_uuid = cloud_thread(cloud)

    with pytest.raises(CloudBadRequestError) as raised:
        cloud.thread.add_messages(thread_uuid, messages=[*turns(1), bad_message])

    assert raised.value.body.error.param == f"messages[1].{field}"
    assert list(cloud.thread.list_messages(thread_uuid)) == []


def test_31_messages_in_one_call_is_400(cloud: CloudZep) -> None:
    thread_uuid = cloud_thread(cloud)

    with pytest.raises(CloudBadRequestError) as raised:
        cloud.thread.add_messages(thread_uuid, messages=turns(31))

    assert raised.value.body.error.param == "messages"
    assert "at most 30 messages" in raised.value.body.error.message
    assert list(cloud.thread.list_messages(thread_uuid)) == []


def test_cloud_limits_are_inclusive(cloud: CloudZep) -> None:
    thread_uuid = cloud_thread(cloud)
    metadata = {f"k{n}": [n, "x", True, 1.5] for n in range(10)}
    batch = [AddMessage(role="tool", content="x" * 2500, metadata=metadata) for _ in range(30)]

    added = cloud.thread.add_messages(thread_uuid, messages=batch)

    assert len(added.messages) == 30
    assert added.messages[0].metadata == metadata


# --- auth -----------------------------------------------------------------------------------


def test_missing_or_malformed_auth_is_401(
    emulator: ZepEmulatorServer, cloud: CloudZep, community: CommunityZep
) -> None:
    no_header = httpx.post(f"{emulator.cloud_base_url}/users", json={})
    assert no_header.status_code == 401
    assert set(no_header.json()["error"]) == {"code", "message", "param", "details", "request_id"}
    v2_no_header = httpx.get(f"{emulator.base_url}/api/v2/sessions/s")
    assert v2_no_header.status_code == 401
    assert set(v2_no_header.json()) == {"message"}

    wrong_scheme = {"additional_headers": {"Authorization": f"Bearer {API_KEY}"}}
    with pytest.raises(CloudUnauthorizedError):
        cloud.user.create(request_options=wrong_scheme)
    with pytest.raises(CommunityApiError) as raised:
        community.memory.get_session("s", request_options=wrong_scheme)
    assert raised.value.status_code == 401

    state = control(emulator, "GET", "/state").text
    assert json.loads(state)["requests"]["by_auth"] == {"missing": 2, "invalid": 2}
    assert json.loads(state)["store"]["users"] == 0
    assert API_KEY not in state


# --- idempotency (zep-cloud) ----------------------------------------------------------------


def test_idempotency_key_replays_the_first_answer(
    emulator: ZepEmulatorServer, cloud: CloudZep
) -> None:
    user = cloud.user.create(user_id="dave", idempotency_key="user-dave")
    assert cloud.user.create(user_id="dave", idempotency_key="user-dave").uuid_ == user.uuid_
    thread_uuid = cloud.thread.create(user_uuid=user.uuid_, idempotency_key="thread-1").uuid_

    first = cloud.thread.with_raw_response.add_messages(
        thread_uuid, messages=turns(3), idempotency_key="turns-0-3"
    )
    again = cloud.thread.with_raw_response.add_messages(
        thread_uuid, messages=turns(3), idempotency_key="turns-0-3"
    )

    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert [m.uuid_ for m in again.data.messages] == [m.uuid_ for m in first.data.messages]
    assert [m.content for m in cloud.thread.list_messages(thread_uuid)] == [
        "turn 000",
        "turn 001",
        "turn 002",
    ]
    # The same key on another route is another request.
    assert cloud.thread.create(user_uuid=user.uuid_, idempotency_key="turns-0-3").uuid_
    assert control(emulator, "GET", "/state").json()["store"] == {
        "path": None,
        "users": 1,
        "threads": 2,
        "messages": 3,
    }


def test_idempotency_key_reused_for_another_body_is_400(cloud: CloudZep) -> None:
    thread_uuid = cloud_thread(cloud)
    cloud.thread.add_messages(thread_uuid, messages=turns(1), idempotency_key="k")

    with pytest.raises(CloudBadRequestError) as raised:
        cloud.thread.add_messages(thread_uuid, messages=turns(1, start=1), idempotency_key="k")

    assert raised.value.body.error.code == "idempotency_key_reused"
    assert len(list(cloud.thread.list_messages(thread_uuid))) == 1


def test_lost_response_then_retry_with_the_same_key_applies_once(
    emulator: ZepEmulatorServer, cloud: CloudZep
) -> None:
    thread_uuid = cloud_thread(cloud)
    emulator.state.latency_ms = 300

    # The client gives up while the emulator is still working: the write lands, the answer is lost.
    with pytest.raises(httpx.ReadTimeout):
        cloud.thread.add_messages(
            thread_uuid,
            messages=turns(2),
            idempotency_key="turn-pair-0",
            request_options={"timeout": 0.1},
        )
    deadline = time.monotonic() + 3
    while len(emulator.state.store.messages_anywhere(thread_uuid) or []) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    emulator.state.latency_ms = 0

    retried = cloud.thread.add_messages(
        thread_uuid, messages=turns(2), idempotency_key="turn-pair-0"
    )

    stored = emulator.state.store.messages_anywhere(thread_uuid)
    assert [m.uuid_ for m in retried.messages] == [m["uuid"] for m in stored]
    assert len(list(cloud.thread.list_messages(thread_uuid))) == 2


def test_faulted_requests_leave_the_key_unused(
    emulator: ZepEmulatorServer, cloud: CloudZep
) -> None:
    thread_uuid = cloud_thread(cloud)

    for knobs in ({"fail_next": 1}, {"throttle_next": 1}):
        emulator.state.configure_faults(**knobs)
        with pytest.raises(CloudApiError):
            cloud.thread.add_messages(thread_uuid, messages=turns(1), idempotency_key="k")
    cloud.thread.add_messages(thread_uuid, messages=turns(1), idempotency_key="k")
    cloud.thread.add_messages(thread_uuid, messages=turns(1), idempotency_key="k")

    assert len(list(cloud.thread.list_messages(thread_uuid))) == 1


def test_sdk_retry_honours_retry_after(emulator: ZepEmulatorServer) -> None:
    retrying = make_cloud(emulator, max_retries=1)
    thread_uuid = cloud_thread(retrying)
    emulator.state.configure_faults(throttle_next=1, retry_after_s=1)

    started = time.monotonic()
    retrying.thread.add_messages(thread_uuid, messages=turns(1))

    assert time.monotonic() - started >= 1
    assert api_requests(emulator)["by_status"] == {"201": 2, "429": 1, "202": 1}


# --- zep-python v2 --------------------------------------------------------------------------


def test_community_full_lifecycle(emulator: ZepEmulatorServer, community: CommunityZep) -> None:
    user = community.user.add(user_id="erin", email="erin@example.com")
    assert community.user.get("erin").uuid_ == user.uuid_
    session = community.memory.add_session(
        session_id="chat-1", user_id="erin", metadata={"topic": "tests"}
    )
    assert (session.session_id, session.user_id, session.metadata) == (
        "chat-1",
        "erin",
        {"topic": "tests"},
    )

    for start, count in in_batches(250):
        answer = community.memory.add("chat-1", messages=community_turns(count, start=start))
        assert answer.message == "OK"

    pages = []
    cursor = 1
    while True:
        page = community.memory.get_session_messages("chat-1", limit=100, cursor=cursor)
        if not page.messages:
            # Like the Community Edition server, a page past the end reports total_count 0.
            assert (page.row_count, page.total_count) == (0, 0)
            break
        assert page.total_count == 250
        pages.append(page)
        cursor += 1

    listed = [message for page in pages for message in page.messages]
    assert [page.row_count for page in pages] == [100, 100, 50]
    # Paging by page number needs the empty page to stop: 3 pages + 1.
    assert api_requests(emulator)["by_route"][f"GET {COMMUNITY_MESSAGES_ROUTE}"] == 4
    assert [m.content for m in listed] == EXPECTED_250
    assert (listed[1].role, listed[1].role_type, listed[1].metadata) == (
        "Bot",
        "assistant",
        {"turn": 1},
    )
    recent = community.memory.get("chat-1", lastn=5)
    assert [m.content for m in recent.messages] == EXPECTED_250[-5:]
    assert len(community.memory.get("chat-1").messages) == 4  # the default window
    # Unset arguments reach the server as empty query values (`?limit=&cursor=`).
    assert len(community.memory.get_session_messages("chat-1").messages) == 100

    assert community.memory.delete("chat-1").message == "OK"
    with pytest.raises(CommunityNotFoundError):
        community.memory.get_session("chat-1")
    with pytest.raises(CommunityNotFoundError):
        community.memory.get("chat-1")
    with pytest.raises(CommunityNotFoundError):
        community.memory.get_session_messages("chat-1")
    with pytest.raises(CommunityNotFoundError):
        community.memory.delete("chat-1")
    assert community.user.delete("erin").message == "OK"
    with pytest.raises(CommunityNotFoundError):
        community.user.get("erin")


def test_community_sessions_follow_the_community_edition(community: CommunityZep) -> None:
    community.user.add(user_id="frank")
    community.memory.add_session(session_id="s-1", user_id="frank")

    with pytest.raises(CommunityBadRequestError, match="session already exists"):
        community.memory.add_session(session_id="s-1")
    with pytest.raises(CommunityBadRequestError, match="user does not exist"):
        community.memory.add_session(session_id="s-2", user_id="nobody")
    with pytest.raises(CommunityBadRequestError):
        community.user.add(user_id="frank")

    # Adding memory to an unknown session creates it, without a user: a lost session is not
    # noticed by memory.add.
    community.memory.add("never-created", messages=community_turns(1))
    assert community.memory.get_session("never-created").user_id is None


BAD_COMMUNITY_BATCHES = [
    pytest.param(community_turns(31), "at most 30 messages", id="31-messages"),
    pytest.param(
        [CommunityMessage(role_type="user", content="x" * 2501)], "at most 2500", id="2501-chars"
    ),
    pytest.param([CommunityMessage(role="Alice", content="hi")], "role_type is required", id="rt"),
    pytest.param([CommunityMessage(role_type="robot", content="hi")], "role_type must", id="bad"),
]


@pytest.mark.parametrize(("messages", "expected"), BAD_COMMUNITY_BATCHES)
def test_community_limits(
    community: CommunityZep, messages: list[CommunityMessage], expected: str
) -> None:
    community.memory.add_session(session_id="limits")

    # memory.add maps only 500 to a typed error, so a 400 arrives as the core ApiError.
    with pytest.raises(CommunityApiError) as raised:
        community.memory.add("limits", messages=messages)

    assert raised.value.status_code == 400
    assert expected in raised.value.body["message"]
    assert community.memory.get_session_messages("limits").messages == []


def test_zep_api_url_overrides_the_base_url_argument(
    emulator: ZepEmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEP_API_URL", emulator.base_url)
    redirected = make_community(emulator, base_url="http://192.0.2.1:9")

    assert redirected.user.add(user_id="gina").user_id == "gina"


def test_sessions_are_threads_for_zep_cloud(cloud: CloudZep, community: CommunityZep) -> None:
    community.user.add(user_id="hugo")
    community.memory.add_session(session_id="shared", user_id="hugo")
    community.memory.add("shared", messages=community_turns(2))

    thread = cloud.thread.lookup(thread_id="shared")
    listed = list(cloud.thread.list_messages(thread.uuid_))

    assert thread.user_uuid == cloud.user.lookup(user_id="hugo").uuid_
    assert [(m.role, m.name, m.content) for m in listed] == [
        ("user", "Alice", "turn 000"),
        ("assistant", "Bot", "turn 001"),
    ]


# --- fault knobs ----------------------------------------------------------------------------


def test_throttle_is_a_plain_text_429_with_retry_after(
    emulator: ZepEmulatorServer, cloud: CloudZep
) -> None:
    thread_uuid = cloud_thread(cloud)
    emulator.state.configure_faults(throttle_next=2, retry_after_s=7)

    # zep-cloud: the text body fails JSON parsing, so the core ApiError carries it verbatim.
    with pytest.raises(CloudApiError) as cloud_raised:
        cloud.thread.add_messages(thread_uuid, messages=turns(1))
    assert cloud_raised.value.status_code == 429
    assert cloud_raised.value.headers["retry-after"] == "7"
    assert cloud_raised.value.headers["content-type"].startswith("text/plain")
    assert cloud_raised.value.body.startswith("Rate limit exceeded")

    # zep-python's errors have no headers; a response hook on the httpx client sees them.
    seen: list[httpx.Response] = []
    hooked_client = httpx.Client(timeout=TIMEOUT_S, event_hooks={"response": [seen.append]})
    hooked = make_community(emulator, httpx_client=hooked_client)
    with pytest.raises(CommunityApiError) as community_raised:
        hooked.memory.get_session("anything")
    assert community_raised.value.status_code == 429
    assert community_raised.value.body.startswith("Rate limit exceeded")
    assert seen[-1].headers["Retry-After"] == "7"

    assert emulator.state.throttle_next == 0
    assert list(cloud.thread.list_messages(thread_uuid)) == []


def test_fail_next_answers_500(
    emulator: ZepEmulatorServer, cloud: CloudZep, community: CommunityZep
) -> None:
    emulator.state.fail_next = 2

    with pytest.raises(CloudApiError) as cloud_raised:
        cloud.user.create(user_id="ivan")
    with pytest.raises(CommunityInternalServerError) as community_raised:
        community.user.add(user_id="ivan")

    assert cloud_raised.value.status_code == 500
    assert cloud_raised.value.body["error"]["code"] == "internal_error"
    assert "fail_next" in community_raised.value.body.message
    assert cloud.user.create(user_id="ivan").user_id == "ivan"


def test_error_rate_with_seed_is_deterministic(
    emulator: ZepEmulatorServer, cloud: CloudZep
) -> None:
    user = cloud.user.create()

    def failures() -> list[bool]:
        outcomes = []
        for _ in range(30):
            try:
                cloud.user.get(user.uuid_)
                outcomes.append(False)
            except CloudApiError as error:
                assert error.status_code == 500
                outcomes.append(True)
        return outcomes

    emulator.state.configure_faults(error_rate=0.5, seed=1234)
    first_run = failures()
    emulator.state.configure_faults(seed=1234)
    second_run = failures()

    assert first_run == second_run
    assert 0 < sum(first_run) < 30


def test_drop_next_closes_the_connection_without_a_response(
    emulator: ZepEmulatorServer, cloud: CloudZep, community: CommunityZep
) -> None:
    thread_uuid = cloud_thread(cloud)
    community.memory.add_session(session_id="dropped")
    emulator.state.drop_next = 2

    with pytest.raises(httpx.RemoteProtocolError):
        cloud.thread.add_messages(thread_uuid, messages=turns(1))
    with pytest.raises(httpx.RemoteProtocolError):
        community.memory.add("dropped", messages=community_turns(1))

    assert emulator.state.store.counts()["messages"] == 0
    assert api_requests(emulator)["by_status"] == {"201": 3, "dropped": 2}


def test_latency_delays_every_api_request(
    emulator: ZepEmulatorServer, community: CommunityZep
) -> None:
    community.memory.add_session(session_id="slow")
    emulator.state.latency_ms = 150

    started = time.monotonic()
    community.memory.get_session("slow")

    assert time.monotonic() - started >= 0.15


def test_out_of_band_loss_is_404(
    emulator: ZepEmulatorServer, cloud: CloudZep, community: CommunityZep
) -> None:
    thread_uuid = cloud_thread(cloud)
    community.memory.add_session(session_id="lost")

    assert control(emulator, "DELETE", f"/threads/{thread_uuid}").json() == {
        "id": thread_uuid,
        "deleted": True,
    }
    assert control(emulator, "DELETE", "/threads/lost").status_code == 200

    with pytest.raises(CloudNotFoundError):
        cloud.thread.add_messages(thread_uuid, messages=turns(1))
    with pytest.raises(CommunityNotFoundError):
        community.memory.get_session_messages("lost")
    assert control(emulator, "DELETE", f"/threads/{thread_uuid}").status_code == 404


def test_knobs_flip_at_runtime_over_http(emulator: ZepEmulatorServer, cloud: CloudZep) -> None:
    user = cloud.user.create()

    flipped = control(emulator, "POST", "/faults", json={"throttle_next": 1, "retry_after_s": 3})

    assert flipped.status_code == 200
    assert flipped.json()["faults"]["throttle_next"] == 1
    with pytest.raises(CloudApiError) as raised:
        cloud.user.get(user.uuid_)
    assert raised.value.status_code == 429
    assert raised.value.headers["retry-after"] == "3"
    assert control(emulator, "GET", "/state").json()["faults"]["throttle_next"] == 0


@pytest.mark.parametrize(
    "knobs",
    [{"error_rate": 1.5}, {"drop_next": -1}, {"latency_ms": "slow"}, {"no_such_knob": 1}],
)
def test_bad_knobs_are_refused_and_change_nothing(
    emulator: ZepEmulatorServer, knobs: dict[str, Any]
) -> None:
    response = control(emulator, "POST", "/faults", json={"fail_next": 1, **knobs})
    assert response.status_code == 400
    assert response.json()["error"]["message"]
    assert emulator.state.fail_next == 0


def test_reset_clears_faults_and_counters_and_optionally_data(
    emulator: ZepEmulatorServer, cloud: CloudZep
) -> None:
    cloud_thread(cloud)
    control(emulator, "POST", "/faults", json={"fail_next": 5, "latency_ms": 10})

    kept = control(emulator, "POST", "/reset").json()
    assert kept["faults"]["fail_next"] == 0 and kept["faults"]["latency_ms"] == 0
    assert kept["requests"]["total"] == 0
    assert kept["store"]["threads"] == 1

    cleared = control(emulator, "POST", "/reset", params={"data": "1"}).json()
    assert cleared["store"] == {"path": None, "users": 0, "threads": 0, "messages": 0}


def test_control_messages_lists_everything_in_order(
    emulator: ZepEmulatorServer, cloud: CloudZep, community: CommunityZep
) -> None:
    thread_uuid = cloud_thread(cloud)
    for start, count in in_batches(120):
        cloud.thread.add_messages(thread_uuid, messages=turns(count, start=start))
    community.memory.add("by-session-id", messages=community_turns(2))

    listed = control(emulator, "GET", f"/threads/{thread_uuid}/messages").json()
    by_session = control(emulator, "GET", "/threads/by-session-id/messages").json()

    assert [m["content"] for m in listed["data"]] == [f"turn {n:03d}" for n in range(120)]
    assert [m["seq"] for m in listed["data"]] == list(range(1, 121))
    assert [m["content"] for m in by_session["data"]] == ["turn 000", "turn 001"]
    assert control(emulator, "GET", "/threads/unknown/messages").status_code == 404


def test_request_counters_include_faulted_requests(
    emulator: ZepEmulatorServer, cloud: CloudZep, community: CommunityZep
) -> None:
    user = cloud.user.create()
    emulator.state.fail_next = 1
    with pytest.raises(CloudApiError):
        cloud.user.get(user.uuid_)
    cloud.user.get(user.uuid_)
    community.memory.add("s", messages=community_turns(1))
    with pytest.raises(CloudApiError):
        cloud.thread.get_summary("00000000-0000-4000-8000-000000000000")
    control(emulator, "GET", "/state")  # control requests are not counted

    counted = api_requests(emulator)

    assert counted["total"] == 5
    assert counted["by_route"] == {
        "POST /api/v4/users": 1,
        "GET /api/v4/users/{user_uuid}": 2,
        "POST /api/v2/sessions/{session_id}/memory": 1,
        "GET /api/{tail}": 1,
    }
    assert counted["by_status"] == {"201": 2, "500": 1, "200": 1, "501": 1}
    assert counted["by_auth"] == {"api-key": 5}


def test_unimplemented_routes_are_501_in_each_apis_error_body(
    cloud: CloudZep, community: CommunityZep
) -> None:
    with pytest.raises(CloudApiError) as cloud_raised:
        cloud.thread.get_summary("00000000-0000-4000-8000-000000000000")
    with pytest.raises(CommunityApiError) as community_raised:
        community.memory.list_sessions()

    assert cloud_raised.value.status_code == 501
    assert "does not implement" in cloud_raised.value.body["error"]["message"]
    assert community_raised.value.status_code == 501
    assert "does not implement" in community_raised.value.body["message"]


# --- file store -----------------------------------------------------------------------------


def test_file_store_survives_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_path = tmp_path / "zep.json"
    with ZepEmulatorServer(ZepEmulatorState(store_path=store_path)) as first:
        writer = make_cloud(first)
        thread_uuid = cloud_thread(writer)
        first_answer = writer.thread.add_messages(
            thread_uuid, messages=turns(3), idempotency_key="before-restart"
        )
        make_community(first).memory.add("kept", messages=community_turns(2))

    with ZepEmulatorServer(ZepEmulatorState(store_path=store_path)) as second:
        reader = make_cloud(second)
        assert [m.content for m in reader.thread.list_messages(thread_uuid)] == [
            "turn 000",
            "turn 001",
            "turn 002",
        ]
        replayed = reader.thread.add_messages(
            thread_uuid, messages=turns(3), idempotency_key="before-restart"
        )
        assert [m.uuid_ for m in replayed.messages] == [m.uuid_ for m in first_answer.messages]
        reader.thread.add_messages(thread_uuid, messages=turns(1, start=3))
        kept = make_community(second).memory.get_session_messages("kept")
        assert [m.content for m in kept.messages] == ["turn 000", "turn 001"]

    assert [path.name for path in tmp_path.iterdir()] == ["zep.json"]  # no temp files left
    assert ZepEmulatorState(store_path=store_path).store.counts() == {
        "users": 1,
        "threads": 2,
        "messages": 6,
    }


def test_foreign_store_file_is_refused(tmp_path: Path) -> None:
    store_path = tmp_path / "other.json"
    store_path.write_text('{"something": "else"}')
    with pytest.raises(ValueError, match="not a version 1 Zep emulator store"):
        ZepEmulatorState(store_path=store_path)


# --- CLI helpers ----------------------------------------------------------------------------


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
        8701,
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
    check_bind_host("127.0.0.1", allow_remote=False)
    check_bind_host("0.0.0.0", allow_remote=True)
    with pytest.raises(ValueError, match="allow-remote"):
        run_emulator(host="192.0.2.10", port=0)


RUNNER_SCRIPT = """
import argparse, sys
from zep_integration.emulator import add_arguments, run_emulator, state_from_options
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
                httpx.get(f"{base_url}/_emulator/state", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        remote = CloudZep(api_key=API_KEY, base_url=f"{base_url}/api/v4", max_retries=0)
        user = remote.user.create(user_id="remote")
        httpx.post(f"{base_url}/_emulator/faults", json={"fail_next": 1}, timeout=5)
        with pytest.raises(CloudApiError) as raised:
            remote.user.get(user.uuid_)
        assert raised.value.status_code == 500
    finally:
        process.terminate()
        process.wait(timeout=5)

    assert user.uuid_ in store_path.read_text()


# --- async clients --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_clients_lifecycle_and_paging(emulator: ZepEmulatorServer) -> None:
    cloud = AsyncCloudZep(
        api_key=API_KEY, base_url=emulator.cloud_base_url, max_retries=0, timeout=TIMEOUT_S
    )
    community = AsyncCommunityZep(api_key=API_KEY, base_url=emulator.base_url, timeout=TIMEOUT_S)

    user = await cloud.user.create(user_id="async-user")
    thread = await cloud.thread.create(user_uuid=user.uuid_)
    await community.memory.add_session(session_id="async-session")
    for start, count in in_batches(75):
        await asyncio.gather(
            cloud.thread.add_messages(thread.uuid_, messages=turns(count, start=start)),
            community.memory.add("async-session", messages=community_turns(count, start=start)),
        )

    pager = await cloud.thread.list_messages(thread.uuid_, page_size=20)
    cloud_listed = [message.content async for message in pager]
    community_listed = [
        message.content
        for cursor in (1, 2)
        for message in (
            await community.memory.get_session_messages("async-session", limit=50, cursor=cursor)
        ).messages
    ]
    await cloud.thread.delete(thread.uuid_)
    await community.memory.delete("async-session")

    expected = [f"turn {number:03d}" for number in range(75)]
    assert cloud_listed == expected
    assert community_listed == expected
    with pytest.raises(CloudNotFoundError):
        await cloud.thread.get(thread.uuid_)
    with pytest.raises(CommunityNotFoundError):
        await community.memory.get("async-session")


@pytest.mark.asyncio
async def test_async_clients_see_faults(emulator: ZepEmulatorServer) -> None:
    cloud = AsyncCloudZep(
        api_key=API_KEY, base_url=emulator.cloud_base_url, max_retries=0, timeout=TIMEOUT_S
    )
    community = AsyncCommunityZep(api_key=API_KEY, base_url=emulator.base_url, timeout=TIMEOUT_S)
    user = await cloud.user.create()

    emulator.state.configure_faults(throttle_next=2, retry_after_s=2)
    with pytest.raises(CloudApiError) as cloud_raised:
        await cloud.user.get(user.uuid_)
    with pytest.raises(CommunityApiError) as community_raised:
        await community.user.get("anyone")
    assert cloud_raised.value.status_code == community_raised.value.status_code == 429
    assert cloud_raised.value.headers["retry-after"] == "2"

    emulator.state.drop_next = 2
    with pytest.raises(httpx.RemoteProtocolError):
        await cloud.user.get(user.uuid_)
    with pytest.raises(httpx.RemoteProtocolError):
        await community.user.get("anyone")

    assert api_requests(emulator)["by_status"] == {"201": 1, "429": 2, "dropped": 2}
