"""The agents a user can chat with, and the registry that finds them by id.

An agent turns a conversation into a reply, produced as a stream of text chunks so that WebSocket
clients see the reply grow. Agents are listed in `settings.CHAT_AGENTS` (id -> dotted class path);
an agent backed by a real model is one new class and one settings line.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string


@dataclass(frozen=True)
class HistoryMessage:
    role: str
    content: str


class UnknownAgent(LookupError):
    """No agent is registered under the requested id."""


class Agent:
    """An agent. Subclasses implement `stream_reply`; it runs in a worker thread, so blocking I/O
    is fine there."""

    agent_id: str = ""

    def stream_reply(
        self, *, turn: int | None, history: Sequence[HistoryMessage], message: str
    ) -> Iterator[str]:
        """Yield the reply to `message`, the session's `turn`-th user message, in chunks that
        concatenate to the whole reply. `history` is the latest part of the conversation before
        it (at most settings.CHAT_HISTORY_WINDOW messages), oldest first. `turn` is None while
        the session's older history is still being read from its remote thread."""
        raise NotImplementedError


class EchoAgent(Agent):
    """Works offline and deterministically: names the turn, reflects the message and what it
    remembers of the conversation."""

    agent_id = "echo"
    max_reflected_chars = 200
    chunk_chars = 24

    def stream_reply(
        self, *, turn: int | None, history: Sequence[HistoryMessage], message: str
    ) -> Iterator[str]:
        earlier = [m for m in history if m.role == "user"]
        quoted = self._clip(message)
        reply = f'You said "{quoted}".' if turn is None else f'Turn {turn}: you said "{quoted}".'
        if earlier:
            reply += f' Earlier you said "{self._clip(earlier[-1].content)}".'
        for start in range(0, len(reply), self.chunk_chars):
            yield reply[start : start + self.chunk_chars]

    def _clip(self, text: str) -> str:
        if len(text) <= self.max_reflected_chars:
            return text
        return text[: self.max_reflected_chars] + "…"


@cache
def _agent_instance(dotted_path: str) -> Agent:
    return import_string(dotted_path)()


def agent_get(*, agent_id: str) -> Agent:
    """The agent registered as `agent_id`; raises UnknownAgent if there is none."""
    try:
        dotted_path = settings.CHAT_AGENTS[agent_id]
    except KeyError:
        raise UnknownAgent(agent_id) from None
    return _agent_instance(dotted_path)


def agent_ids() -> list[str]:
    return sorted(settings.CHAT_AGENTS)
