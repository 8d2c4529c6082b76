import json

import pytest
from django.core.management import call_command
from django.test import override_settings
from rest_framework.test import APIClient

from sessions_app.models import ChatMessage, ChatSession

pytestmark = pytest.mark.django_db


def chat(api, message, **fields):
    return api.post("/api/v1/chat", {"message": message, **fields}, format="json")


def all_pages(api, url):
    """Follow `next` links; return every result and the number of pages."""
    results, pages = [], 0
    while url:
        response = api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        results += body["results"]
        pages += 1
        url = body["next"]
    return results, pages


class TestChat:
    def test_new_session_gets_a_server_made_id(self, api, user):
        response = chat(api, "hello")
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {
            "session_id",
            "agent_id",
            "project_id",
            "reply",
            "thread_id",
            "persistence",
        }
        assert body["agent_id"] == "echo"
        assert body["project_id"] == "default"
        assert body["thread_id"] is None
        assert body["persistence"] == "local"
        assert body["reply"] == 'Turn 1: you said "hello".'
        session = ChatSession.objects.get(owner=user, session_id=body["session_id"])
        assert [(m.seq, m.role, m.content) for m in session.messages.all()] == [
            (1, "user", "hello"),
            (2, "assistant", body["reply"]),
        ]

    def test_the_agent_sees_the_conversation(self, api):
        chat(api, "first", session_id="s1")
        body = chat(api, "second", session_id="s1").json()
        assert body["session_id"] == "s1"
        assert body["reply"] == 'Turn 2: you said "second". Earlier you said "first".'

    def test_message_is_trimmed(self, api):
        assert chat(api, "  hi \n").json()["reply"] == 'Turn 1: you said "hi".'

    def test_history_stays_in_order_over_many_turns(self, api):
        for n in range(1, 31):
            reply = chat(api, f"message {n}", session_id="long").json()["reply"]
            assert reply.startswith(f"Turn {n}: ")
        messages, pages = all_pages(api, "/api/v1/sessions/long/messages?page_size=7")
        assert pages == 9
        assert [m["seq"] for m in messages] == list(range(1, 61))
        assert [m["content"] for m in messages if m["role"] == "user"] == [
            f"message {n}" for n in range(1, 31)
        ]
        assert set(messages[0]) == {"seq", "role", "content", "agent_id", "created_at"}

    def test_agent_and_project_make_separate_sessions(self, api):
        chat(api, "to default", session_id="shared")
        chat(api, "to other project", session_id="shared", project_id="p2")
        assert ChatSession.objects.filter(session_id="shared").count() == 2
        detail = api.get("/api/v1/sessions/shared?project_id=p2").json()
        assert detail["project_id"] == "p2"
        assert detail["message_count"] == 2
        assert api.get("/api/v1/sessions/shared?project_id=p3").status_code == 404


class TestValidation:
    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({}, "message"),
            ({"message": ""}, "message"),
            ({"message": "   \n\t "}, "message"),
            ({"message": "x" * 32_001}, "message"),
            ({"message": 42}, "message"),
            ({"message": ["a"]}, "message"),
            ({"message": None}, "message"),
            ({"message": "a\x00b"}, "message"),
            ({"message": "hi", "session_id": "has space"}, "session_id"),
            ({"message": "hi", "session_id": "x" * 129}, "session_id"),
            ({"message": "hi", "session_id": ""}, "session_id"),
            ({"message": "hi", "session_id": 7}, "session_id"),
            ({"message": "hi", "agent_id": "nobody"}, "agent_id"),
            ({"message": "hi", "project_id": "a/b"}, "project_id"),
        ],
    )
    def test_bad_fields_get_400_naming_the_field(self, api, payload, field):
        response = api.post("/api/v1/chat", payload, format="json")
        assert response.status_code == 400
        body = response.json()
        assert body["code"] == "invalid"
        assert field in body["fields"]
        assert body["detail"].startswith(f"{field}: ")
        assert ChatMessage.objects.count() == 0

    def test_longest_message_is_accepted(self, api):
        assert chat(api, "y" * 32_000).status_code == 200

    def test_unknown_agent_error_lists_the_known_ones(self, api):
        body = chat(api, "hi", agent_id="gpt-9").json()
        assert body["detail"] == "agent_id: Unknown agent 'gpt-9'; known agents: echo."

    @pytest.mark.parametrize(
        "raw", [b"{not json", b"[1, 2]", b'"text"', b"null", b'{"message": "\\ud800"}']
    )
    def test_malformed_bodies_get_400_json(self, api, raw):
        response = api.generic("POST", "/api/v1/chat", raw, content_type="application/json")
        assert response.status_code == 400
        assert response["Content-Type"] == "application/json"
        assert response.json()["code"] in {"parse_error", "invalid"}

    def test_huge_body_gets_413_json(self, api):
        raw = json.dumps({"message": "z" * (2 * 1024 * 1024)}).encode()
        response = api.generic("POST", "/api/v1/chat", raw, content_type="application/json")
        assert response.status_code == 413
        assert response.json()["code"] == "too_large"

    def test_form_encoded_body_gets_415(self, api):
        response = api.post("/api/v1/chat", {"message": "hi"})
        assert response.status_code == 415
        assert response.json()["code"] == "unsupported_media_type"


class TestSessions:
    def test_list_is_newest_activity_first_and_paginated(self, api):
        for name in ["a", "b", "c", "d", "e"]:
            chat(api, "hi", session_id=name)
        chat(api, "again", session_id="b")
        results, pages = all_pages(api, "/api/v1/sessions?page_size=2")
        assert [s["session_id"] for s in results] == ["b", "e", "d", "c", "a"]
        assert pages == 3
        first = api.get("/api/v1/sessions?page_size=2").json()
        assert set(first) == {"next", "previous", "results"}
        assert first["previous"] is None

    def test_detail(self, api):
        chat(api, "hi", session_id="d1")
        body = api.get("/api/v1/sessions/d1").json()
        assert body["session_id"] == "d1"
        assert body["thread_id"] is None
        assert body["message_count"] == 2

    def test_delete_removes_session_and_messages(self, api):
        chat(api, "hi", session_id="gone")
        assert api.delete("/api/v1/sessions/gone").status_code == 204
        assert api.get("/api/v1/sessions/gone").status_code == 404
        assert not ChatMessage.objects.exists()
        assert api.delete("/api/v1/sessions/gone").status_code == 404

    def test_bad_lookup_parameters_get_400(self, api):
        chat(api, "hi", session_id="s")
        response = api.get("/api/v1/sessions/s?agent_id=no%20way")
        assert response.status_code == 400
        assert "agent_id" in response.json()["fields"]

    def test_bad_cursor_gets_404_json(self, api):
        response = api.get("/api/v1/sessions?cursor=garbage")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


class TestIsolation:
    """Another user's session does not exist for you: 404 on every endpoint, never listed."""

    @pytest.fixture
    def bobs_session(self, other_api):
        chat(other_api, "bob's secret", session_id="private")
        return "private"

    def test_detail_messages_and_delete_are_404(self, api, other_api, bobs_session):
        assert api.get(f"/api/v1/sessions/{bobs_session}").status_code == 404
        assert api.get(f"/api/v1/sessions/{bobs_session}/messages").status_code == 404
        assert api.delete(f"/api/v1/sessions/{bobs_session}").status_code == 404
        assert other_api.get(f"/api/v1/sessions/{bobs_session}").status_code == 200

    def test_list_shows_only_own_sessions(self, api, bobs_session):
        assert api.get("/api/v1/sessions").json()["results"] == []

    def test_same_session_id_is_a_separate_session(self, api, other_api, bobs_session, user):
        body = chat(api, "mine", session_id=bobs_session).json()
        assert body["reply"] == 'Turn 1: you said "mine".'
        messages = api.get(f"/api/v1/sessions/{bobs_session}/messages").json()["results"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["mine"]
        bobs = other_api.get(f"/api/v1/sessions/{bobs_session}/messages").json()["results"]
        assert [m["content"] for m in bobs if m["role"] == "user"] == ["bob's secret"]


class TestAuth:
    @pytest.mark.parametrize(
        ("method", "url"),
        [
            ("post", "/api/v1/chat"),
            ("get", "/api/v1/sessions"),
            ("get", "/api/v1/sessions/x"),
            ("get", "/api/v1/sessions/x/messages"),
            ("delete", "/api/v1/sessions/x"),
        ],
    )
    def test_anonymous_gets_401_json(self, method, url):
        response = getattr(APIClient(), method)(url, {"message": "hi"}, format="json")
        assert response.status_code == 401
        assert response.json()["code"] == "not_authenticated"

    def test_bad_token_gets_401(self):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
        response = chat(client, "hi")
        assert response.status_code == 401
        assert response.json()["code"] == "authentication_failed"

    def test_token_of_an_inactive_user_gets_401(self, api, user):
        assert chat(api, "hi").status_code == 200
        user.is_active = False
        user.save(update_fields=["is_active"])
        response = chat(api, "hi again")
        assert response.status_code == 401
        assert response.json()["code"] == "authentication_failed"
        assert ChatMessage.objects.filter(content="hi again").count() == 0

    def test_each_token_acts_as_its_own_user(self, api, other_api, user, other_user):
        chat(api, "mine", session_id="s")
        chat(other_api, "theirs", session_id="s")
        owners = dict(
            ChatMessage.objects.filter(role="user").values_list("content", "session__owner")
        )
        assert owners == {"mine": user.pk, "theirs": other_user.pk}

    def test_session_login_works_and_needs_csrf(self, user):
        client = APIClient(enforce_csrf_checks=True)
        client.login(username="alice", password="pw-alice")
        assert client.get("/api/v1/sessions").status_code == 200
        response = chat(client, "hi")
        assert response.status_code == 403
        assert "CSRF" in response.json()["detail"]


class TestPublicEndpoints:
    def test_health(self, client):
        response = client.get("/api/v1/health")
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "database": "ok",
            "sinks": {
                "foundry": {"active": False, "reason": "USE_FOUNDRY_THREADS is off"},
                "zep": {"active": False, "reason": "ZEP_API_URL or ZEP_API_KEY is not set"},
            },
        }

    def test_schema_is_served(self, client):
        response = client.get("/api/v1/schema", HTTP_ACCEPT="application/json")
        assert response.status_code == 200
        paths = response.json()["paths"]
        assert {"/api/v1/chat", "/api/v1/sessions", "/api/v1/sessions/{session_id}"} <= set(paths)

    def test_schema_validates_without_warnings(self, tmp_path):
        call_command("spectacular", "--validate", "--fail-on-warn", "--file", tmp_path / "s.yaml")

    def test_unknown_url_is_json_404(self, client):
        with override_settings(DEBUG=False):
            response = client.get("/api/v1/nothing-here")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"

    def test_wrong_method_is_json_405(self, api):
        response = api.put("/api/v1/chat", {}, format="json")
        assert response.status_code == 405
        assert response.json()["code"] == "method_not_allowed"
