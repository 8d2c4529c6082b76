import pytest
from django.urls import reverse

from foundry_integration.flag import FLAG_NAME, forget_cached_flag, foundry_threads_enabled
from sessions_app import services
from sessions_app.models import ChatSession, RemoteDeletion, SinkState
from tests.foundry_integration.conftest import (
    drain,
    flag_settings,
    sync_pass,
    thread_exists,
    thread_messages,
)

pytestmark = pytest.mark.django_db(transaction=True)

STATUS_URL = "/admin/foundry_integration/foundrystatus/"


@pytest.fixture
def operator(client, make_user):
    make_user("operator", is_staff=True, is_superuser=True)
    client.login(username="operator", password="pw-operator")
    return client


def test_status_page_shows_flag_config_breaker_backlog(operator, user, foundry):
    services.chat_turn(user=user, message="hi", session_id="s")
    foundry.state.fail_next = 1
    sync_pass()
    page = operator.get(STATUS_URL)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Flag USE_FOUNDRY_THREADS: on" in text
    assert "Foundry persistence: active" in text
    assert f"{foundry.base_url}/api/projects/testproj" in text
    assert "emulator-key" not in text
    assert "Circuit breaker: closed" in text
    assert "HTTP 500" in text  # the latest error
    assert "sessions with pending messages</th><td>1" in text
    assert "pending messages</th><td>2" in text  # the state wants the first; the session has 2


def test_status_page_says_why_foundry_is_not_active(operator, settings):
    settings.FLAGS = flag_settings(True)
    settings.AZURE_FOUNDRY_AGENT_ENDPOINT = ""
    forget_cached_flag()
    text = operator.get(STATUS_URL).content.decode()
    assert "Foundry persistence: not active" in text
    assert "AZURE_FOUNDRY_AGENT_ENDPOINT is not set" in text


def test_flag_changed_in_admin_takes_effect_without_restart(operator, user, foundry, settings):
    settings.FLAGS = flag_settings(False)
    forget_cached_flag()
    assert services.chat_turn(user=user, message="1", session_id="f").persistence == "local"
    text = operator.get(STATUS_URL).content.decode()
    assert "Flag USE_FOUNDRY_THREADS: off" in text
    assert "environment (USE_FOUNDRY_THREADS=false)" in text

    operator.post(STATUS_URL, {"flag": "on"})
    assert foundry_threads_enabled()
    turn = services.chat_turn(user=user, message="2", session_id="f")
    assert turn.persistence == "foundry"
    drain()
    thread_id = ChatSession.objects.get(session_id="f").foundry_thread_id
    # The whole history goes to the new thread, also what was said while the flag was off.
    assert [c for _, c in thread_messages(foundry, thread_id)][::2] == ["1", "2"]
    text = operator.get(STATUS_URL).content.decode()
    assert "admin override" in text

    operator.post(STATUS_URL, {"flag": "off"})
    assert not foundry_threads_enabled()
    calls = foundry.state.counters.total
    assert services.chat_turn(user=user, message="3", session_id="f").persistence == "local"
    sync_pass()
    assert foundry.state.counters.total == calls

    operator.post(STATUS_URL, {"flag": "default"})
    assert not foundry_threads_enabled()
    from flags.models import FlagState

    assert not FlagState.objects.filter(name=FLAG_NAME).exists()


def test_flag_off_override_wins_over_a_true_environment_default(operator, foundry):
    assert foundry_threads_enabled()
    operator.post(STATUS_URL, {"flag": "off"})
    assert not foundry_threads_enabled()


def test_staff_without_flag_permission_cannot_change_it(client, make_user, foundry):
    from django.contrib.auth.models import Permission

    staff = make_user("viewer", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_foundrystatus"))
    client.login(username="viewer", password="pw-viewer")
    assert client.get(STATUS_URL).status_code == 200
    client.post(STATUS_URL, {"flag": "off"})
    assert foundry_threads_enabled()


def session_action(operator, action: str, session: ChatSession):
    return operator.post(
        reverse("admin:sessions_app_chatsession_changelist"),
        {"action": action, "_selected_action": [session.pk]},
    )


def test_session_list_shows_sync_state(operator, user, foundry):
    services.chat_turn(user=user, message="hi", session_id="listed")
    text = operator.get(reverse("admin:sessions_app_chatsession_changelist")).content.decode()
    assert "foundry: pending 2" in text
    drain()
    text = operator.get(reverse("admin:sessions_app_chatsession_changelist")).content.decode()
    assert ": synced" in text and "foundry (" in text
    session = ChatSession.objects.get(session_id="listed")
    page = operator.get(reverse("admin:sessions_app_chatsession_change", args=[session.pk]))
    assert session.foundry_thread_id in page.content.decode()


def test_failing_session_shows_error_and_retry_now_clears_backoff(operator, user, foundry):
    services.chat_turn(user=user, message="hi", session_id="failing")
    foundry.state.error_rate = 1.0
    sync_pass()
    text = operator.get(reverse("admin:sessions_app_chatsession_changelist")).content.decode()
    assert "foundry: failing: 1 attempts" in text
    foundry.state.error_rate = 0
    session = ChatSession.objects.get(session_id="failing")
    session_action(operator, "retry_sync_now", session)
    state = SinkState.objects.get()
    assert state.attempts == 0
    sync_pass()
    assert SinkState.objects.get().delivered_seq == 2


def test_recreate_thread_and_resync(operator, user, foundry):
    services.chat_turn(user=user, message="hi", session_id="again")
    drain()
    old = ChatSession.objects.get(session_id="again").foundry_thread_id
    session_action(operator, "recreate_remote_threads", ChatSession.objects.get())
    drain()
    new = ChatSession.objects.get(session_id="again").foundry_thread_id
    assert new != old
    assert thread_messages(foundry, new) == thread_messages(foundry, old)


def test_delete_remote_thread(operator, user, foundry):
    services.chat_turn(user=user, message="hi", session_id="strip")
    drain()
    thread_id = ChatSession.objects.get(session_id="strip").foundry_thread_id
    session_action(operator, "delete_remote_threads", ChatSession.objects.get())
    assert ChatSession.objects.get().foundry_thread_id is None
    assert RemoteDeletion.objects.get().remote_id == thread_id
    page = operator.get(reverse("admin:sessions_app_remotedeletion_changelist"))
    assert thread_id in page.content.decode()
    drain()
    assert not thread_exists(foundry, thread_id)
    assert ChatSession.objects.get().messages.count() == 2
