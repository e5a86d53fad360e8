"""The emulated device runtime: the memory figures vLLM's GPU worker sizes the KV
cache from, and the start-up steps of the NPU worker that only an NPU ran before.

The ledger is what makes a memory defect fail here as it fails on an NPU: every
storage an op makes while a start-up phase runs counts against the emulated
device's capacity until it is freed, and an allocation past the capacity is the
out-of-memory error torch_npu's allocator raises.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from vllm_ascend.emulated import runtime

MIB = 1 << 20


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch) -> runtime.DeviceMemory:
    """A fresh 4 MiB emulated device, the current one."""
    memory = runtime.DeviceMemory(4 * MIB)
    monkeypatch.setattr(runtime, "memory", memory)
    return memory


def test_storages_an_op_makes_count_views_and_in_place_results_do_not(device) -> None:
    with runtime.accounting():
        x = torch.empty(MIB // 4, dtype=torch.float32)  # 1 MiB
        assert device.allocated == MIB
        x.view(2, -1)
        x[: MIB // 8].t()
        x.fill_(1.0)
        x.add_(1.0)
        torch.add(x, 1.0, out=x)
        assert device.allocated == MIB
        y = x * 2
        assert device.allocated == 2 * MIB
    del y
    assert device.allocated == MIB and device.peak == 2 * MIB
    device.reset_peak()
    assert device.peak == MIB
    del x
    assert device.allocated == 0


def test_outside_start_up_nothing_is_counted(device) -> None:
    x = torch.empty(MIB, dtype=torch.uint8)
    assert device.allocated == 0
    with runtime.accounting(), runtime.accounting():  # re-entrant
        y = x.clone()
    assert device.allocated == MIB
    with runtime.accounting():
        pass
    assert device.allocated == MIB
    del y


def test_an_allocation_past_the_capacity_is_the_npus_out_of_memory(device) -> None:
    with runtime.accounting():
        kept = torch.empty(3 * MIB, dtype=torch.uint8)
        with pytest.raises(torch.OutOfMemoryError,
                           match=r"NPU out of memory \(emulated\): tried to allocate 0\.002 GiB "
                                 r"with 0\.003 GiB of 0\.004 GiB in use"):
            torch.empty(2 * MIB, dtype=torch.uint8)
        # what was held stays, and what fits still fits
        assert device.allocated == 3 * MIB
        torch.empty(MIB, dtype=torch.uint8)
    del kept


def test_torch_npu_and_the_accelerator_report_the_ledger(device) -> None:
    runtime.install()
    assert torch.npu.emulated and torch.npu.is_available()
    assert torch.npu.get_device_properties(0).total_memory == 4 * MIB
    with runtime.accounting():
        x = torch.empty(MIB, dtype=torch.uint8)
    assert torch.accelerator.memory_allocated() == torch.npu.memory_allocated() == MIB
    assert torch.accelerator.get_memory_info() == (3 * MIB, 4 * MIB)
    assert torch.accelerator.memory_stats()["allocated_bytes.all.peak"] == MIB
    torch.accelerator.reset_peak_memory_stats()
    del x
    assert torch.npu.max_memory_allocated() == MIB and torch.npu.memory_allocated() == 0
    # one stream, in order: an event is complete when recorded
    start, end = torch.npu.Event(enable_timing=True), torch.npu.Event(enable_timing=True)
    side = torch.npu.Stream()
    with torch.npu.stream(side):
        assert torch.npu.current_stream() is side
        start.record()
    end.record()
    assert torch.npu.current_stream() is not side
    assert end.query() and start.elapsed_time(end) >= 0.0


def test_capacity_follows_the_current_vllm_config(monkeypatch) -> None:
    from vllm.config import VllmConfig, set_current_vllm_config

    monkeypatch.setattr(runtime, "_capacity", None)
    config = VllmConfig(additional_config={"ascend": {"device_memory": "3GiB"}})
    with set_current_vllm_config(config):
        assert runtime.capacity() == 3 << 30
    assert runtime.capacity() == 3 << 30  # the worker's, for the rest of the process


def test_the_worker_loads_the_model_outside_any_memory_pool() -> None:
    """vLLM's worker asks for its sleep-mode pool's context around the weights
    and the KV cache, and raises for a platform it does not know."""
    from contextlib import nullcontext

    from vllm_ascend.worker import NPUWorker

    worker = object.__new__(NPUWorker)
    assert isinstance(worker._maybe_get_memory_pool_context(tag="weights"), nullcontext)


def test_the_workers_kernel_warm_up_is_the_npus(monkeypatch) -> None:
    """vLLM's GPU worker warms every registered JIT kernel (each of the plugin's
    overrides has a warm-up: the kit's tests), then tunes CUDA and Triton
    kernels, importing the models they serve (some need torchvision, absent on
    an NPU host). The NPU worker's warm-up is the first part only."""
    from vllm.v1.worker import gpu_worker

    from vllm_ascend import patches, worker

    patches.apply_to_worker()
    assert gpu_worker.kernel_warmup is worker.kernel_warmup
    from vllm.v1.worker import gpu_model_runner

    from vllm_ascend import npu_graphs

    # and the runner's graphs are captured, and measured, on the NPU's stream
    assert gpu_model_runner.graph_capture is npu_graphs.graph_capture
    lazy = "vllm.model_executor.warmup.minimax_m3_msa_warmup"
    monkeypatch.delitem(sys.modules, lazy, raising=False)
    warmed = []
    stub = SimpleNamespace(
        vllm_config=SimpleNamespace(kernel_config=SimpleNamespace(enable_jit_warmup=True)),
        model_runner=SimpleNamespace(
            jit_warmup_registry=SimpleNamespace(warmup=lambda: warmed.append(True))))
    gpu_worker.kernel_warmup(stub)  # type: ignore[arg-type]
    assert warmed == [True]
    assert lazy not in sys.modules


def test_each_worker_has_a_device_of_its_own() -> None:
    """As each worker process has its NPU: engines whose workers share a process
    do not count each other's memory."""
    class Worker:
        def __init__(self, additional_config: dict) -> None:
            self.vllm_config = SimpleNamespace(additional_config=additional_config)

    first, second = Worker({"ascend": {"device_memory": "8MiB"}}), Worker({})
    one, two = runtime.device_of(first), runtime.device_of(second)
    assert runtime.device_of(first) is one and one is not two
    assert one.capacity == 8 * MIB and two.capacity == runtime.capacity()
    with runtime.accounting(one):
        held = torch.empty(MIB, dtype=torch.uint8)
    with runtime.accounting(two):
        assert torch.accelerator.get_memory_info()[0] == two.capacity - two.allocated
    assert (one.allocated, two.allocated) == (MIB, 0)
    del held


def test_what_the_host_stands_in_for_holds_only_its_result(device) -> None:
    """A bfloat16 product widened to float32 on the host (no bfloat16 GEMM here)
    is the NPU's one matrix product: its float32 copies are not device memory,
    its bfloat16 result is."""
    from vllm_ascend import npu_ops

    x, w = torch.randn(64, 512).bfloat16(), torch.randn(512, 512).bfloat16()
    with runtime.accounting():
        with npu_ops.stand_in("linear"):
            out = torch.nn.functional.linear(x.float(), w.float()).to(torch.bfloat16)
        assert device.allocated == out.untyped_storage().nbytes() == 64 * 512 * 2
        plain = torch.nn.functional.linear(x.float(), w.float())  # float32 outside: counted
        assert device.allocated == 64 * 512 * 2 + plain.untyped_storage().nbytes()
