"""``torch.npu``'s graphs on the host: ``NPUGraph``, ``graph``, the task groups
and their updates, with the semantics of ACL graphs.

An ACL graph records the kernels launched on a stream and replays them as
recorded: device tensors by address, host values frozen, among them the
attention kernel's length lists. The kernels recorded between
``graph_task_group_begin`` and ``graph_task_group_end`` form a task group that
can be issued again with new host arguments before a replay
(``graph_task_update_begin``/``graph_task_update_end``).

Here, capture runs the code once and records each kernel: every ``npu_ops``
launch as one, every other aten op as one unless it is a view or only
allocates (``npu_ops.runs_kernel``). Replay runs the recorded kernels again on
the recorded tensors and writes each result into the tensor the capture
produced, so later kernels read it where they read it at capture. Collectives
between workers (``c10d`` ops) are recorded too, and replayed to completion.
Code that forgets an update replays stale lengths here as on an NPU, and a host
synchronisation inside a capture fails here as it does there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vllm_ascend import npu_ops

_CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


@dataclass
class _Task:
    """One recorded kernel: what it ran on, and the tensors it produced."""

    name: str
    kernel: Callable[..., Any]
    args: tuple
    kwargs: dict
    outputs: Any

    def replay(self) -> None:
        _store(self.outputs, self.kernel(*self.args, **self.kwargs))


@dataclass
class _CollectiveTask(_Task):
    """A collective (``c10d``): it writes into the tensors it was given, and
    the step goes on once it completes, as HCCL's does inside an ACL graph."""

    def replay(self) -> None:
        _, work = self.kernel(*self.args, **self.kwargs)
        work.wait()


def _store(recorded: Any, fresh: Any) -> None:
    if isinstance(recorded, torch.Tensor):
        if fresh is not recorded:  # in-place and out= kernels return the tensor itself
            recorded.copy_(fresh)
    elif isinstance(recorded, (tuple, list)):
        for r, f in zip(recorded, fresh, strict=True):
            _store(r, f)


@dataclass(frozen=True)
class TaskGroup:
    """The handle ``graph_task_group_end`` returns."""

    graph: EmulatedNPUGraph
    index: int


class EmulatedNPUGraph:
    """``torch.npu.NPUGraph``'s reference on the CPU (see the module docstring)."""

    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.groups: list[range] = []  # task indices of each task group
        self.captured = False
        self.inference_mode = False
        self._group_start: int | None = None
        self._recorder: _Recorder | None = None

    def capture_begin(self, pool: Any = None, capture_error_mode: str = "global") -> None:
        global _capturing
        if _capturing is not None:
            raise RuntimeError("another NPU graph capture is underway")
        if self.captured:
            raise RuntimeError("this NPU graph holds a capture already; reset() it first")
        _capturing = self
        # tensors made under inference mode are written again only under it
        self.inference_mode = torch.is_inference_mode_enabled()
        npu_ops.set_launch_hook(self._record_launch)
        self._recorder = _Recorder(self)
        self._recorder.__enter__()

    def capture_end(self) -> None:
        global _capturing
        assert self._recorder is not None, "capture_end without capture_begin"
        self._recorder.__exit__(None, None, None)
        self._recorder = None
        npu_ops.set_launch_hook(None)
        _capturing = None
        if self._group_start is not None:
            raise RuntimeError("graph_task_group_begin without graph_task_group_end")
        self.captured = True

    def replay(self) -> None:
        if not self.captured:
            raise RuntimeError("replay of an NPU graph that holds no capture")
        if _updating is not None:
            raise RuntimeError("replay inside graph_task_update_begin/end")
        with torch.inference_mode(self.inference_mode):
            for task in self.tasks:
                task.replay()

    def reset(self) -> None:
        self.__init__()

    def pool(self) -> int:
        return id(self)

    # --- recording ---------------------------------------------------------

    def _record_launch(self, name: str, kernel: Callable[..., Any], args: tuple,
                       kwargs: dict) -> Any:
        result = kernel(*args, **kwargs)
        self.tasks.append(_Task(f"npu.{name}", kernel, args, kwargs, result))
        return result

    def _group_begin(self) -> None:
        if self._group_start is not None:
            raise RuntimeError("task groups do not nest")
        self._group_start = len(self.tasks)

    def _group_end(self) -> TaskGroup:
        if self._group_start is None:
            raise RuntimeError("graph_task_group_end without graph_task_group_begin")
        self.groups.append(range(self._group_start, len(self.tasks)))
        self._group_start = None
        return TaskGroup(self, len(self.groups) - 1)


class _Recorder(TorchDispatchMode):
    """Records the aten kernels of a capture (``npu_ops`` launches record themselves)."""

    def __init__(self, graph: EmulatedNPUGraph) -> None:
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "c10d":  # a collective between the workers' devices
            out = func(*args, **kwargs)
            self.graph.tasks.append(_CollectiveTask(
                f"c10d.{func.overloadpacket.__name__}", func, args, kwargs, out))
            return out
        if func.namespace not in ("aten", "prims"):
            # vLLM's custom ops (attention, MoE) are Python over aten and NPU
            # ops: run their CPU kernel with this mode on, so that what they
            # launch is recorded, not the op itself
            with self:
                return func.redispatch(_CPU_KEYS, *args, **kwargs)
        if npu_ops.in_launch():  # a reference's own aten ops: its one kernel
            return func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in npu_ops.HOST_SYNC:
            raise RuntimeError(
                f"aten.{name} makes the host wait for the device, which an NPU graph "
                "capture cannot record")
        out = func(*args, **kwargs)
        if npu_ops.runs_kernel(func, args, out):
            self.graph.tasks.append(_Task(f"aten.{name}", func, args, kwargs, out))
        return out


_capturing: EmulatedNPUGraph | None = None
#: (task group, tasks issued so far) while an update is open
_updating: tuple[TaskGroup, list[int]] | None = None


def _update_launch(name: str, kernel: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Inside an update: the launch replaces the group's next task, without running."""
    assert _updating is not None
    group, issued = _updating
    indices = group.graph.groups[group.index]
    if len(issued) == len(indices):
        raise RuntimeError(f"the update issues more kernels than task group {group.index} "
                           f"holds ({len(indices)})")
    task = group.graph.tasks[indices[len(issued)]]
    if task.name != f"npu.{name}":
        raise RuntimeError(f"the update issues npu.{name} where the task group holds "
                           f"{task.name}")
    task.args, task.kwargs = args, kwargs
    issued.append(indices[len(issued)])
    return task.outputs


# --- torch.npu's graph API ------------------------------------------------------------

NPUGraph = EmulatedNPUGraph


@contextmanager
def graph(npu_graph: EmulatedNPUGraph, pool: Any = None, stream: Any = None,
          capture_error_mode: str = "global") -> Iterator[None]:
    """``torch.npu.graph``: the code inside is captured into ``npu_graph``."""
    npu_graph.capture_begin(pool, capture_error_mode)
    try:
        yield
    finally:
        npu_graph.capture_end()


def is_current_stream_capturing() -> bool:
    return _capturing is not None


def graph_pool_handle() -> Any:
    return object()


def graph_task_group_begin(stream: Any) -> None:
    if _capturing is None:
        raise RuntimeError("graph_task_group_begin outside an NPU graph capture")
    _capturing._group_begin()


def graph_task_group_end(stream: Any) -> TaskGroup:
    if _capturing is None:
        raise RuntimeError("graph_task_group_end outside an NPU graph capture")
    return _capturing._group_end()


def graph_task_update_begin(stream: Any, handle: TaskGroup) -> None:
    """Kernels launched until :func:`graph_task_update_end` replace the group's, in order."""
    global _updating
    if _updating is not None or _capturing is not None:
        raise RuntimeError("graph_task_update_begin inside a capture or another update")
    _updating = (handle, [])
    npu_ops.set_launch_hook(_update_launch)


def graph_task_update_end(stream: Any) -> None:
    global _updating
    if _updating is None:
        raise RuntimeError("graph_task_update_end without graph_task_update_begin")
    group, issued = _updating
    npu_ops.set_launch_hook(None)
    _updating = None
    held = len(group.graph.groups[group.index])
    if len(issued) != held:
        raise RuntimeError(f"the update issued {len(issued)} kernels; task group "
                           f"{group.index} holds {held}")


#: what :mod:`vllm_ascend.emulated.runtime` puts on ``torch.npu``
API = {name: globals()[name] for name in (
    "NPUGraph", "graph", "is_current_stream_capturing", "graph_pool_handle",
    "graph_task_group_begin", "graph_task_group_end", "graph_task_update_begin",
    "graph_task_update_end")}
