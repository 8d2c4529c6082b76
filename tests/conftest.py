import pytest
from channels.layers import channel_layers
from django.contrib.auth import get_user_model
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from foundry_integration.emulator import EmulatorServer


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing():
    # The production hasher costs about 0.3 s per password here, paid for every test user and
    # login; the tests check who may sign in, not how passwords are stored.
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture(autouse=True)
def _no_in_process_sender(settings):
    # Tests run the sender explicitly (sessions_app.sync.Sender); a background one would race
    # them, and so would a background warm-up reading the flag.
    settings.SYNC_IN_PROCESS = False
    settings.SINK_WARM_UP = False


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    # The channel layer is one per process, and the Redis one's receive lock belongs to the
    # event loop that first took it; every async test has a loop of its own.
    yield
    channel_layers.backends.clear()


@pytest.fixture
def emulator():
    """A Foundry emulator (both APIs) on a free loopback port, fresh for each test."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def make_user(db):
    def make(username: str, **extra):
        return get_user_model().objects.create_user(
            username=username, password="pw-" + username, **extra
        )

    return make


@pytest.fixture
def user(make_user):
    return make_user("alice")


@pytest.fixture
def other_user(make_user):
    return make_user("bob")


def token_client(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(user) -> APIClient:
    """An API client authenticated as `user` with a DRF token."""
    return token_client(user)


@pytest.fixture
def other_api(other_user) -> APIClient:
    return token_client(other_user)
