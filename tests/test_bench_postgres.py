"""The benchmark's PostgreSQL mode runs (`bench/run.py --quick --postgres URL`): the side-by-side
phase with every server on a database of its own, which it drops afterwards. It checks that it
ran, never a time."""

import os
import shutil

import psycopg
import pytest

from tests.live import run_quick_bench
from tests.services import POSTGRES_URL, unreachable

pytestmark = [pytest.mark.services, pytest.mark.live_server_process]


def bench_databases(admin_url: str) -> list[str]:
    with psycopg.connect(admin_url) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'chat_bench_%'")
        return [name for (name,) in rows]


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2 or not shutil.which("taskset"),
    reason="the harness pins processes to two CPUs with taskset",
)
def test_quick_benchmark_on_postgres_runs(tmp_path):
    problem = unreachable()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs PostgreSQL: {problem}")
        pytest.skip(f"needs PostgreSQL ({problem})")
    admin_url = POSTGRES_URL.rsplit("/", 1)[0] + "/postgres"
    before = bench_databases(admin_url)
    output, report = run_quick_bench(tmp_path, "--postgres", admin_url)
    assert report["database"] == "postgresql"
    assert report["side_by_side"][0]["drains"]["on-8"]["left_after_drain"] == 0
    assert bench_databases(admin_url) == before  # its databases were dropped
    assert "postgres://" not in output  # no connection string (it may hold a password)
