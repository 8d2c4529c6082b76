"""The benchmark harness runs (its --quick smoke mode): it checks that every case ran and got
answers, never a time."""

import os
import shutil

import pytest

from tests.live import run_quick_bench

pytestmark = pytest.mark.live_server_process


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2 or not shutil.which("taskset"),
    reason="the harness pins processes to two CPUs with taskset",
)
def test_quick_benchmark_runs(tmp_path):
    _, report = run_quick_bench(tmp_path)
    together = report["side_by_side"][0]["cases"]
    flag_on = next(row for row in together if row["case"] == "on-8")
    assert flag_on["cpu_ms_per_request_ratio"] > 0, flag_on
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        counts = report["instructions"]
        assert counts["off"]["per_request"] > 0, counts
        assert counts["on"]["active_sinks"] == ["foundry"], counts
        assert counts["off"]["active_sinks"] == [], counts
