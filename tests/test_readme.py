"""The README's examples, run as written against a real server (only its address changed)."""

import re
import subprocess
import sys

import pytest

from tests.live import ROOT, ServerProcess, server_env

pytestmark = pytest.mark.live_server_process


def readme_blocks(heading: str) -> list[str]:
    """The ```bash blocks of the README section under `## heading`."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def test_token_rest_and_websocket_examples_work_as_written(tmp_path):
    script = "\n".join(
        [*readme_blocks("Get a token"), *readme_blocks("REST"), *readme_blocks("WebSocket")]
    )
    env = server_env(tmp_path)
    with ServerProcess(env, tmp_path / "server.log") as server:
        script = script.replace("http://127.0.0.1:8000", server.url)
        script = script.replace("ws://127.0.0.1:8000", server.url.replace("http", "ws", 1))
        script = script.replace(".venv/bin/python", sys.executable)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"reply":"Turn 1: you said \\"Hello there\\"."' in out
    assert '"session_id":"demo"' in out
    assert "204\n" in out
    assert 'Turn 1: you said "Hello over a socket".' in out
    assert "'type': 'reply'" in out
