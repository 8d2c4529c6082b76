"""The benchmark harness runs (its --quick smoke mode): it checks that every case ran and got
answers, never a time."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.live import ROOT

pytestmark = pytest.mark.live_server_process


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2 or not shutil.which("taskset"),
    reason="the harness pins processes to two CPUs with taskset",
)
def test_quick_benchmark_runs(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed_checks"] == []
    together = report["side_by_side"]["cases"]
    assert [row["case"] for row in together] == [
        "off-8",
        "twin-8",
        "on-8",
        "down-8",
        "nosender-8",
    ]
    for row in together:
        assert row["requests"] > 0 and row["cpu_ms_per_request"] > 0, row
    flag_on = next(row for row in together if row["case"] == "on-8")
    assert flag_on["cpu_ms_per_request_ratio"] > 0, flag_on
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        counts = report["instructions"]
        assert counts["off"]["per_request"] > 0, counts
        assert counts["on"]["active_sinks"] == ["foundry"], counts
        assert counts["off"]["active_sinks"] == [], counts
