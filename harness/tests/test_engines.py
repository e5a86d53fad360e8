"""The session's engine pool shuts engines down without two in-process cores
at once: each in-process shutdown tears down the process's distributed state
(``cleanup_dist_env_and_memory``), and two at a time destroyed one process
group twice (``KeyError`` in ``destroy_process_group``)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from vllm.v1.engine.core_client import InprocClient

from vllm_harness.fixtures import Engines


class _Core:
    def __init__(self, log: list[tuple[str, float, float]], name: str) -> None:
        self.log, self.name = log, name

    def shutdown(self) -> None:
        start = time.monotonic()
        time.sleep(0.2)
        self.log.append((self.name, start, time.monotonic()))


class _InprocCore(_Core, InprocClient):  # an InprocClient to the pool, without an engine
    pass


def _llm(core: _Core) -> SimpleNamespace:
    return SimpleNamespace(llm_engine=SimpleNamespace(engine_core=core))


def _overlap(a: tuple[str, float, float], b: tuple[str, float, float]) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def test_in_process_cores_shut_down_one_at_a_time_and_the_others_side_by_side() -> None:
    log: list[tuple[str, float, float]] = []
    pool = Engines()
    for name in ("here-1", "here-2", "here-3"):
        pool.get(name, lambda name=name: _llm(_InprocCore(log, name)))
    for name in ("apart-1", "apart-2"):
        pool.get(name, lambda name=name: _llm(_Core(log, name)))
    pool.close()
    assert sorted(name for name, _, _ in log) == [
        "apart-1", "apart-2", "here-1", "here-2", "here-3"]
    here = [entry for entry in log if entry[0].startswith("here")]
    apart = [entry for entry in log if entry[0].startswith("apart")]
    assert not any(_overlap(a, b) for i, a in enumerate(here) for b in here[i + 1:])
    assert _overlap(*apart), "cores in processes of their own shut down side by side"
    assert pool.get("here-1", lambda: "rebuilt") == "rebuilt", "close empties the pool"
