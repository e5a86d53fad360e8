"""vllm-ascend's model runner: vLLM's GPU runner on an NPU, emulated or not.

vLLM allocates each layer's cache as one tensor with K and V side by side
per token. The NPU's cache kernels (``npu_scatter_pa_kv_cache``, paged
``npu_fused_infer_attention_score``) take K and V as two contiguous
[blocks, block_size, kv_heads, head_dim] caches, so each layer gets a
[2, blocks, block_size, kv_heads, head_dim] tensor of the same size instead,
allocated in place of vLLM's (never beside it: the budget is the device's
memory less everything else): :class:`NPUKVCacheLayout`.

Decode steps run as ACL graphs (:class:`vllm_ascend.acl_graph.ACLGraphWrapper`)
unless graphs are off: vLLM's runner pads a decode step to a captured batch
size and dispatches it; the model sits in the ACL graph wrapper where vLLM's
would put its CUDA graph wrapper (:class:`ACLGraphModel`).

Under emulation the same runner runs on the host: only ``torch.npu`` and the
kernels are stood in for (``vllm_ascend.emulated``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from vllm.compilation.cuda_graph import CUDAGraphWrapper
from vllm.compilation.monitor import set_cudagraph_capturing_enabled
from vllm.config import CUDAGraphMode
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheConfig
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.utils import bind_kv_cache

from vllm_ascend import get_logger, npu_graphs

logger = get_logger(__name__)


def npu_kv_cache(spec: AttentionSpec, num_blocks: int, device: torch.device) -> torch.Tensor:
    """Zeroed [2, blocks, block_size, kv_heads, head_dim] cache of one layer."""
    if spec.head_size_v != spec.head_size:
        raise NotImplementedError("vllm-ascend needs K and V of one head size")
    return torch.zeros(2, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_size,
                       dtype=spec.dtype, device=device)


class NPUKVCacheLayout:
    """Separate contiguous K and V caches per layer, as the NPU kernels take them
    (a mixin over vLLM's GPU model runner)."""

    kv_caches: list[torch.Tensor]
    device: torch.device
    compilation_config: Any
    shared_kv_cache_layers: dict[str, str]

    def initialize_kv_cache_tensors(
        self,
        kv_cache_config: KVCacheConfig,
        kernel_block_sizes: list[int],
        kv_cache_allocation_context: AbstractContextManager | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each layer's cache in the NPU's layout, allocated in place of vLLM's.

        As vLLM's own: each layer of ``kv_cache_config``'s tensors gets
        ``num_blocks`` blocks, allocated inside ``kv_cache_allocation_context``;
        a layer sharing another's cache gets that one; the runner and the
        layers are bound to them. Unlike it, vLLM's buffer of all layers is
        never allocated: alive while these are made, it would take KV memory
        to twice its budget (out of memory at ``--gpu-memory-utilization 0.9``).
        """
        groups = kv_cache_config.kv_cache_groups
        specs = {name: group.kv_cache_spec for group in groups for name in group.layer_names}
        # per cache group, as vLLM's allocation reads them
        kernel_blocks = {name: kernel_block_sizes[i] for i, group in enumerate(groups)
                         if i < len(kernel_block_sizes) for name in group.layer_names}
        caches: dict[str, torch.Tensor] = {}
        with kv_cache_allocation_context or nullcontext():
            for tensor in kv_cache_config.kv_cache_tensors:
                for name in tensor.layers:
                    spec = specs[name]
                    if not isinstance(spec, AttentionSpec):
                        raise NotImplementedError(
                            f"vllm-ascend has no KV cache for {type(spec).__name__}")
                    if kernel_blocks.get(name, spec.block_size) != spec.block_size:
                        raise NotImplementedError(
                            f"vllm-ascend's kernels read whole blocks of {spec.block_size} "
                            f"tokens, not kernel blocks of {kernel_blocks[name]}")
                    caches[name] = npu_kv_cache(spec, kv_cache_config.num_blocks_of(tensor),
                                                self.device)
        for name, target in self.shared_kv_cache_layers.items():
            caches[name] = caches[target]
        self.kv_caches.clear()
        bind_kv_cache(caches, self.compilation_config.static_forward_context, self.kv_caches,
                      kv_cache_groups=groups)
        return caches

    def _zero_block_ids(self, block_ids: list[int]) -> None:
        # blocks are the second dimension of the [2, blocks, ...] caches
        for cache in self.kv_caches:
            cache[:, block_ids] = 0


class ACLGraphModel:
    """The model in the ACL graph wrapper, when the graph mode has full graphs
    (a mixin over vLLM's GPU model runner)."""

    model: Any
    compilation_config: Any
    vllm_config: Any

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        from vllm_ascend.acl_graph import ACLGraphWrapper

        super().load_model(*args, **kwargs)
        if not self.compilation_config.cudagraph_mode.has_full_cudagraphs():
            return
        model = self.model
        if isinstance(model, ACLGraphWrapper):
            return
        if isinstance(model, CUDAGraphWrapper):  # vLLM's GPU runner wraps for CUDA
            model = model.runnable
        self.model = ACLGraphWrapper(model, self.vllm_config, runtime_mode=CUDAGraphMode.FULL)

    def profile_cudagraph_memory(self) -> int:
        """vLLM's estimate of the graphs' memory, leaving other engines' graphs.

        vLLM ends its profile by clearing the graphs of every graph wrapper in
        the process; a second engine started in the process (two ``LLM``
        objects) would then leave the first one without its graphs, and its
        next decode step would try to capture outside capture time. This
        runner's own wrapper has captured nothing yet, so restoring what every
        wrapper held before the profile drops only the profile's graphs.
        """
        from vllm_ascend.acl_graph import ACLGraphWrapper

        held = [(wrapper, dict(wrapper.concrete_cudagraph_entries),
                 dict(getattr(wrapper, "attention_tasks", {})))
                for wrapper in list(CUDAGraphWrapper._all_instances)]
        try:
            return super().profile_cudagraph_memory()
        finally:
            for wrapper, entries, tasks in held:
                wrapper.concrete_cudagraph_entries.update(entries)
                if isinstance(wrapper, ACLGraphWrapper):
                    wrapper.attention_tasks.update(tasks)

    def capture_model(self) -> int:
        """vLLM's capture of each decode batch size, on a stream of its own.

        vLLM's own capture enters ``graph_capture``, which takes CUDA's and
        XPU's communicators only (HCCL's collectives need no capture context).
        Returns the device memory the graphs took, which the worker compares
        with its estimate (:meth:`vllm_ascend.worker.NPUWorker.determine_available_memory`).
        """
        if self.compilation_config.cudagraph_mode == CUDAGraphMode.NONE:
            return 0
        free_before = torch.accelerator.get_memory_info()[0]
        set_cudagraph_capturing_enabled(True)
        try:
            with npu_graphs.capture_stream():
                for mode, descriptors in self.cudagraph_dispatcher.get_capture_descs():
                    self._capture_cudagraphs(descriptors, cudagraph_runtime_mode=mode)
        finally:
            set_cudagraph_capturing_enabled(False)
        torch.accelerator.synchronize()
        return max(free_before - torch.accelerator.get_memory_info()[0], 0)


class NPUModelRunner(NPUKVCacheLayout, ACLGraphModel, GPUModelRunner):
    """vLLM's GPU model runner on an Ascend NPU: batches, sampling, the device
    buffers and the capture of decode graphs are vLLM's own, the KV cache laid
    out for the NPU kernels, the graphs ACL graphs. Its torch.cuda streams and
    events are torch_npu's (``vllm_ascend.patches``)."""

