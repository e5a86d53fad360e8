"""The emulated NPU's device runtime: ``torch.npu`` and ``torch.accelerator`` on the host.

vLLM's GPU worker and model runner, which the NPU worker and runner are, size
the KV cache from the device's memory statistics (``torch.accelerator``, which
torch_npu implements on an NPU), make streams and events by ``torch.cuda``'s
names (torch_npu's on an NPU: :mod:`vllm_ascend.patches`) and synchronise the
device. Here the device is the host: tensors live in host memory, one stream
runs everything in order, the memory statistics are those of a device of a
fixed capacity (``VLLM_ASCEND_DEVICE_MEMORY``), and the graphs are
:mod:`vllm_ascend.emulated.graphs`'.

Memory is accounted while the worker starts up (:func:`accounting`, entered by
the NPU worker around each start-up phase through the platform): every storage
an op creates then counts against the capacity until it is freed, so the
weights, the profile run's peak, the KV cache and the captured graphs are
measured as torch_npu's allocator measures them, and an allocation past the
capacity raises the out-of-memory error the NPU would. Steady-state steps are
not tracked (every op would pay for it); what start-up allocated stays counted
until it is freed. Host-side buffers the runner makes in those phases count too
(they are host memory on an NPU; small): a slight over-estimate.

Each worker has a device of its own (:func:`device_of`), as each worker process
has its NPU; engines whose workers share a process (the tests' in-process
engines) then do not see each other's memory as used.
"""

from __future__ import annotations

import time
import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vllm_ascend.envs import SETTINGS

DEVICE_NAME = "Ascend NPU (emulated)"


_capacity: int | None = None


def capacity() -> int:
    """The emulated device's memory, from the settings: ``additional_config`` of
    the vLLM config current when it was first asked for (the worker's, as it
    sets up the device) wins over the environment."""
    global _capacity
    from vllm.config import get_current_vllm_config_or_none

    config = get_current_vllm_config_or_none()
    if config is not None or _capacity is None:
        _capacity = SETTINGS.resolve(config.additional_config if config else None)[
            "device_memory"]
    return _capacity


class DeviceMemory:
    """What torch_npu's caching allocator reports, for the storages it saw made."""

    def __init__(self, capacity: int | None = None) -> None:
        self._capacity = capacity
        self.allocated = 0
        self.peak = 0
        self._live: dict[int, int] = {}

    @property
    def capacity(self) -> int:
        """Its own, else the settings' (:func:`capacity`)."""
        return self._capacity if self._capacity is not None else capacity()

    def count(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if not size or key in self._live:
            return
        limit = self.capacity
        if self.allocated + size > limit:
            gib = 1 << 30
            raise torch.OutOfMemoryError(
                f"NPU out of memory (emulated): tried to allocate {size / gib:.3f} GiB with "
                f"{self.allocated / gib:.3f} GiB of {limit / gib:.3f} GiB in use")
        self._live[key] = size
        self.allocated += size
        self.peak = max(self.peak, self.allocated)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.allocated -= self._live.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak = self.allocated

    def stats(self) -> dict[str, int]:
        return {"allocated_bytes.all.current": self.allocated,
                "allocated_bytes.all.peak": self.peak,
                "reserved_bytes.all.current": self.allocated,
                "reserved_bytes.all.peak": self.peak}


#: the current device: the last one accounted (:func:`accounting`)
memory = DeviceMemory()

_devices: weakref.WeakKeyDictionary[Any, DeviceMemory] = weakref.WeakKeyDictionary()


def device_of(worker: Any) -> DeviceMemory:
    """The worker's device, of the capacity its settings give."""
    if worker not in _devices:
        config = worker.vllm_config.additional_config
        _devices[worker] = DeviceMemory(SETTINGS.resolve(config)["device_memory"])
    return _devices[worker]


class _Accountant(TorchDispatchMode):
    """Counts each storage an op creates (not the views and in-place results,
    whose storage is an input's). Where the host stands in for one NPU kernel
    (:func:`vllm_ascend.npu_ops.stand_in`: a bfloat16 product widened to
    float32), its float32 temporaries are the host's, not the NPU's: only the
    result in the model's dtype counts."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from vllm_ascend import npu_ops

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        host_only = npu_ops.standing_in()
        made = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)
                and t.device.type == "cpu" and not t.is_sparse
                and not (host_only and t.dtype == torch.float32)]
        if made:
            given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                     if isinstance(t, torch.Tensor) and t.device.type == "cpu"
                     and not t.is_sparse}
            for t in made:
                storage = t.untyped_storage()
                if storage.data_ptr() not in given:
                    memory.count(storage)
        return out


_depth = 0


@contextmanager
def accounting(device: DeviceMemory | None = None) -> Iterator[None]:
    """Account the storages made inside against ``device`` (the current one if
    not given), which is current from then on. Re-entrant."""
    global _depth, memory
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    if device is not None:
        memory = device
    mode = _Accountant()
    _depth = 1
    try:
        with mode:
            yield
    finally:
        _depth = 0


# --- streams and events: the host runs every kernel in order -----------------------

class Stream:
    """``torch.npu.Stream``: work is done when it is issued, so waiting is free."""

    def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any) -> None:
        self.device = device
        self.priority = priority

    def wait_stream(self, stream: Stream) -> None:
        pass

    def wait_event(self, event: Event) -> None:
        pass

    def record_event(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


class Event:
    """``torch.npu.Event``: recorded when issued, complete at once."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False,
                 interprocess: bool = False) -> None:
        self.enable_timing = enable_timing
        self._at: float | None = None

    def record(self, stream: Stream | None = None) -> None:
        self._at = time.perf_counter()

    def wait(self, stream: Stream | None = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: Event) -> float:
        if self._at is None or end._at is None:
            raise RuntimeError("elapsed_time of an event that was not recorded")
        return (end._at - self._at) * 1000.0


_streams: list[Stream] = [Stream()]


def current_stream(device: Any = None) -> Stream:
    return _streams[-1]


@contextmanager
def stream(s: Stream | None) -> Iterator[None]:
    if s is None:
        yield
        return
    _streams.append(s)
    try:
        yield
    finally:
        _streams.pop()


# --- the device ----------------------------------------------------------------------

_device_index = 0


def device_count() -> int:
    from vllm_plugin_kit.settings import usable_cores

    return usable_cores()


def set_device(device: Any) -> None:
    global _device_index
    index = device.index if isinstance(device, torch.device) else device
    _device_index = int(index or 0)


def current_device() -> int:
    return _device_index


def get_device_properties(device: Any = None) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=DEVICE_NAME, total_memory=memory.capacity,
                                 multi_processor_count=torch.get_num_threads())


def mem_get_info(device: Any = None) -> tuple[int, int]:
    total = memory.capacity
    return total - memory.allocated, total


def _noop(name: str) -> Any:
    """A call with nothing to do on the host, a function of its own per name
    (torch.compile keeps one handler per function: synchronize's and
    empty_cache's must differ)."""

    def call(*args: Any, **kwargs: Any) -> None:
        return None

    call.__name__ = call.__qualname__ = name
    return call


def npu_module() -> types.ModuleType:
    """``torch.npu`` as the plugin and vLLM's runner call it."""
    module = types.ModuleType("torch.npu", "torch_npu's device runtime, emulated on the host")
    names = {
        "emulated": True,
        "is_available": lambda: True,
        "device_count": device_count,
        "set_device": set_device,
        "current_device": current_device,
        "get_device_name": lambda device=None: DEVICE_NAME,
        "get_device_properties": get_device_properties,
        "synchronize": _noop("synchronize"),
        "Stream": Stream,
        "Event": Event,
        "current_stream": current_stream,
        "stream": stream,
        "manual_seed_all": _noop("manual_seed_all"),  # torch.manual_seed seeds the host's generator
        "empty_cache": _noop("empty_cache"),
        "mem_get_info": mem_get_info,
        "memory_stats": lambda device=None: memory.stats(),
        "memory_allocated": lambda device=None: memory.allocated,
        "max_memory_allocated": lambda device=None: memory.peak,
        "memory_reserved": lambda device=None: memory.allocated,
        "reset_peak_memory_stats": lambda device=None: memory.reset_peak(),
    }
    from vllm_ascend.emulated import graphs

    for name, value in {**names, **graphs.API}.items():
        setattr(module, name, value)
    return module


#: what ``torch.accelerator`` answers where torch_npu would implement it
ACCELERATOR = {
    "memory_stats": lambda device=None: memory.stats(),
    "get_memory_info": mem_get_info,
    "memory_allocated": lambda device=None: memory.allocated,
    "max_memory_allocated": lambda device=None: memory.peak,
    "memory_reserved": lambda device=None: memory.allocated,
    "reset_peak_memory_stats": lambda device=None: memory.reset_peak(),
    "synchronize": _noop("synchronize"),
    "empty_cache": _noop("empty_cache"),
    "empty_host_cache": _noop("empty_host_cache"),
    "device_count": device_count,
    "set_device_index": set_device,
    "current_device_index": current_device,
}


def install() -> None:
    """``torch.npu``, the accelerator's memory and synchronisation calls and
    ``torch.Event``, emulated in this process. Installing twice is harmless."""
    if not getattr(getattr(torch, "npu", None), "emulated", False):
        torch.npu = npu_module()  # type: ignore[attr-defined]
    for name, value in ACCELERATOR.items():
        setattr(torch.accelerator, name, value)
    # the device-generic event (vLLM's runner syncs its host copies with one),
    # which torch_npu backs as the current accelerator's
    torch.Event = Event  # type: ignore[misc]
