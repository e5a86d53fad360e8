"""vLLM's static-graph wrapper on an NPU: ACL graphs of whole decode steps.

vLLM's runner dispatches each step to a graph of its padded batch size and
keeps the inputs in static buffers; this wrapper, vLLM's CUDA graph wrapper
with ACL graphs (``vllm_ascend.npu_graphs``), captures a graph the first
time a batch descriptor comes and replays it after. Before replaying a FULL
graph it reissues every layer's attention kernel with the step's block table
and sequence lengths, the host arguments the graph would otherwise replay
from the capture (``vllm_ascend.attention.update_graph_tasks``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from vllm.compilation.counter import compilation_counter
from vllm.compilation.cuda_graph import CUDAGraphEntry, CUDAGraphWrapper
from vllm.compilation.monitor import validate_cudagraph_capturing_enabled
from vllm.config import CUDAGraphMode
from vllm.forward_context import get_forward_context, is_forward_context_available

from vllm_ascend import attention, npu_graphs

#: graph replays in this process, by the batch size (tokens) of the graph
replayed: Counter[int] = Counter()


class ACLGraphWrapper(CUDAGraphWrapper):
    """``CUDAGraphWrapper`` (its dispatch, entries and bookkeeping) on ACL graphs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the attention kernels each captured graph holds, by batch descriptor
        self.attention_tasks: dict[Any, list[attention.GraphTask]] = {}

    def clear_graphs(self) -> None:
        super().clear_graphs()
        self.attention_tasks.clear()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not is_forward_context_available():
            return self.runnable(*args, **kwargs)
        context = get_forward_context()
        mode, descriptor = context.cudagraph_runtime_mode, context.batch_descriptor
        if mode == CUDAGraphMode.NONE or mode != self.runtime_mode:
            return self.runnable(*args, **kwargs)
        assert descriptor is not None, "a graph step needs its batch descriptor"
        entry = self.concrete_cudagraph_entries.get(descriptor)
        if entry is None or entry.cudagraph is None:
            return self._capture(descriptor, args, kwargs)
        if self.runtime_mode == CUDAGraphMode.FULL:
            attention.update_graph_tasks(self.attention_tasks[descriptor],
                                         context.attn_metadata)
        entry.cudagraph.replay()
        replayed[descriptor.num_tokens] += 1
        return entry.output

    def _capture(self, descriptor: Any, args: tuple, kwargs: dict) -> Any:
        validate_cudagraph_capturing_enabled()
        graph = npu_graphs.new_graph()
        with attention.recording_graph_tasks() as tasks, \
                npu_graphs.capture(graph, pool=self.graph_pool,
                                   stream=npu_graphs.current_stream()):
            output = self.runnable(*args, **kwargs)
        # the outputs live in the graph's memory: each replay rewrites them
        self.concrete_cudagraph_entries[descriptor] = CUDAGraphEntry(
            batch_descriptor=descriptor, cudagraph=graph, output=output)
        self.attention_tasks[descriptor] = tasks
        compilation_counter.num_cudagraph_captured += 1
        return output
