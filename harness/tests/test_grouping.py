"""The suites share one engine per configuration through pytest-xdist's
``--dist loadgroup``: every test of an ``xdist_group`` runs on one worker, which
builds the engine once. When that stops holding (pytest 9.2 with pytest-xdist
3.8, pytest-xdist#1386) nothing fails: each worker builds its own copy of the
engine and the run takes far longer. This checks the installed pair."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SAMPLE = '''
import os

import pytest

pytestmark = pytest.mark.xdist_group("engine")


@pytest.mark.parametrize("i", range(6))
def test_one(i):
    with open(os.environ["WORKERS_FILE"], "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
'''


def test_loadgroup_keeps_a_group_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    workers = tmp_path / "workers.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-q",
         "-p", "no:cacheprovider", str(tmp_path / "test_sample.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "WORKERS_FILE": str(workers)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = workers.read_text().split()
    assert len(seen) == 6
    assert len(set(seen)) == 1, (
        f"one xdist_group ran on workers {sorted(set(seen))}: this pytest and "
        "pytest-xdist do not honour --dist loadgroup, so every engine would be built "
        "once per worker (see pytest-xdist#1386)")
