"""The contract check, and a test of it: it fails, naming the symbol, when vLLM changes one."""

from __future__ import annotations

from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker
from vllm_plugin_kit.contract import KIT, OVERRIDES, Coupling, problems, unlisted_overrides
from vllm_plugin_kit.worker import HostWorker

POOL = "vllm.v1.worker.gpu_worker.Worker._maybe_get_memory_pool_context"


def test_the_kits_couplings_hold():
    assert problems(KIT) == []


def test_a_changed_signature_is_named(monkeypatch):
    def reshaped(self, tag, pool_name=None):  # a new parameter upstream
        raise AssertionError("not called")

    monkeypatch.setattr(Worker, "_maybe_get_memory_pool_context", reshaped)
    found = problems(KIT)
    assert len(found) == 1
    assert found[0].startswith(POOL)
    assert "takes (tag, pool_name), the plugin expects (tag)" in found[0]


def test_a_removed_name_is_named(monkeypatch):
    monkeypatch.delattr(Worker, "_maybe_get_memory_pool_context")
    found = problems(KIT)
    assert [p.split(" ", 1)[0] for p in found] == [POOL]
    assert "no longer exists" in found[0]


def test_a_missing_module_is_named():
    coupling = Coupling("vllm.v1.worker.no_such_runner.Runner._step", OVERRIDES, "why", ())
    [found] = problems([coupling])
    assert found.startswith("vllm.v1.worker.no_such_runner.Runner._step") and "no longer" in found


def test_unlisted_private_overrides_are_found():
    class Worker2(HostWorker):
        def _maybe_get_memory_pool_context(self, tag):  # listed in KIT
            raise AssertionError

        def _should_warm_up_model(self):  # a private CPUWorker method nobody listed
            return False

        def _helper(self):  # ours alone: not vLLM's
            return None

    assert unlisted_overrides([Worker2], KIT) == [
        "vllm.v1.worker.cpu_worker.CPUWorker._should_warm_up_model"]
    assert unlisted_overrides([HostWorker], KIT) == []
    assert CPUWorker._should_warm_up_model  # the name the test leans on exists
