import pytest
from django.urls import reverse

from sessions_app import services
from sessions_app.models import ChatMessage, ChatSession

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, make_user):
    make_user("operator", is_staff=True, is_superuser=True)
    client.login(username="operator", password="pw-operator")
    return client


@pytest.fixture
def session(user):
    for n in range(3):
        services.chat_turn(user=user, message=f"m{n}", session_id="admin-s")
    return ChatSession.objects.get(session_id="admin-s")


@pytest.mark.parametrize(
    "url",
    [
        "admin:index",
        "admin:sessions_app_chatsession_changelist",
        "admin:sessions_app_chatmessage_changelist",
    ],
)
def test_list_pages_load(staff_client, session, url):
    assert staff_client.get(reverse(url)).status_code == 200


@pytest.mark.parametrize(
    "query", ["q=alice", "q=admin-s", "has_thread=yes", "has_thread=no", "agent_id=echo"]
)
def test_session_search_and_filters(staff_client, session, query):
    url = reverse("admin:sessions_app_chatsession_changelist") + "?" + query
    response = staff_client.get(url)
    assert response.status_code == 200
    expected = 0 if query == "has_thread=yes" else 1
    assert response.context["cl"].result_count == expected


def test_session_page_shows_its_messages(staff_client, session):
    response = staff_client.get(reverse("admin:sessions_app_chatsession_change", args=[session.pk]))
    assert response.status_code == 200
    assert b"m2" in response.content
    assert b"6 messages" in response.content


def test_message_page_loads(staff_client, session):
    message = session.messages.first()
    url = reverse("admin:sessions_app_chatmessage_change", args=[message.pk])
    assert staff_client.get(url).status_code == 200


def test_operator_can_delete_a_session(staff_client, session):
    url = reverse("admin:sessions_app_chatsession_delete", args=[session.pk])
    assert staff_client.get(url).status_code == 200
    response = staff_client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert not ChatSession.objects.exists()
    assert not ChatMessage.objects.exists()


def test_non_staff_is_sent_to_login(client, user):
    client.login(username="alice", password="pw-alice")
    response = client.get(reverse("admin:sessions_app_chatsession_changelist"))
    assert response.status_code == 302
