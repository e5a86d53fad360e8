"""ACL graphs through one door (``torch.npu``'s graph API: torch_npu's on an NPU,
:mod:`vllm_ascend.emulated.graphs` under emulation).

An ACL graph (``torch.npu.NPUGraph``) records the kernels launched on a stream
and replays them as recorded: device tensors by address, host values frozen,
among them the attention kernel's length lists. The kernels recorded between
``graph_task_group_begin`` and ``graph_task_group_end`` form a task group that
can be issued again with new host arguments before a replay
(``graph_task_update_begin``/``graph_task_update_end``): how a captured decode
step gets the next step's sequence lengths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def new_graph() -> Any:
    return torch.npu.NPUGraph()


@contextmanager
def capture(graph: Any, pool: Any = None, stream: Any = None) -> Iterator[None]:
    """``torch.npu.graph(graph, pool, stream)``: the code inside is captured."""
    with torch.npu.graph(graph, pool=pool, stream=stream):
        yield


@contextmanager
def capture_stream() -> Iterator[None]:
    """Captures inside run on a stream of their own, which first waits for the
    current one."""
    stream = torch.npu.Stream()
    stream.wait_stream(torch.npu.current_stream())
    with torch.npu.stream(stream):
        yield


@contextmanager
def graph_capture(device: Any = None) -> Iterator[None]:
    """vLLM's ``graph_capture`` for an NPU: the capture stream, without the
    CUDA and XPU communicators' capture contexts (vLLM's asserts one of them;
    HCCL's collectives need none)."""
    with capture_stream():
        yield


def is_capturing() -> bool:
    return torch.npu.is_current_stream_capturing()


def current_stream() -> Any:
    return torch.npu.current_stream()


def graph_pool_handle() -> Any:
    return torch.npu.graph_pool_handle()


def task_group_begin(stream: Any) -> None:
    torch.npu.graph_task_group_begin(stream)


def task_group_end(stream: Any) -> Any:
    return torch.npu.graph_task_group_end(stream)


def task_update_begin(stream: Any, handle: Any) -> None:
    """Kernels launched until :func:`task_update_end` replace the group's, in order."""
    torch.npu.graph_task_update_begin(stream, handle)


def task_update_end(stream: Any) -> None:
    torch.npu.graph_task_update_end(stream)
