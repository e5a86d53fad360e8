"""vllm-ascend's model runners: vLLM's GPU runner on an NPU, its CPU runner emulated.

vLLM allocates each layer's cache as one tensor with K and V side by side
per token. The NPU's cache kernels (``npu_scatter_pa_kv_cache``, paged
``npu_fused_infer_attention_score``) take K and V as two contiguous
[blocks, block_size, kv_heads, head_dim] caches, so each layer gets a
[2, blocks, block_size, kv_heads, head_dim] tensor of the same size instead;
both runners share that layout (:class:`NPUKVCacheLayout`).

Decode steps run as ACL graphs (:class:`vllm_ascend.acl_graph.ACLGraphWrapper`)
unless graphs are off: vLLM's runner pads a decode step to a captured batch
size and dispatches it; both runners put the model in the ACL graph wrapper
where vLLM's would put its CUDA graph wrapper (:class:`ACLGraphModel`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from vllm.compilation.cuda_graph import CUDAGraphWrapper
from vllm.compilation.monitor import set_cudagraph_capturing_enabled
from vllm.config import CUDAGraphMode
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheConfig
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.utils import bind_kv_cache
from vllm_plugin_kit import linear

from vllm_ascend import get_logger, npu_graphs

logger = get_logger(__name__)


def npu_kv_cache(like: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """Zeroed [2, blocks, block_size, kv_heads, head_dim] cache for a layer whose
    vLLM cache is ``like`` ([blocks, ...])."""
    if spec.head_size_v != spec.head_size:
        raise NotImplementedError("vllm-ascend needs K and V of one head size")
    return torch.zeros(2, like.shape[0], spec.block_size, spec.num_kv_heads, spec.head_size,
                       dtype=spec.dtype, device=like.device)


class NPUKVCacheLayout:
    """Separate contiguous K and V caches per layer, as the NPU kernels take them
    (a mixin over vLLM's GPU or CPU model runner)."""

    kv_caches: list[torch.Tensor]

    def initialize_kv_cache_tensors(
        self,
        kv_cache_config: KVCacheConfig,
        kernel_block_sizes: list[int],
        kv_cache_allocation_context: AbstractContextManager | None = None,
    ) -> dict[str, torch.Tensor]:
        vllm_caches = super().initialize_kv_cache_tensors(
            kv_cache_config, kernel_block_sizes, kv_cache_allocation_context)
        specs = {name: group.kv_cache_spec for group in kv_cache_config.kv_cache_groups
                 for name in group.layer_names}
        caches: dict[str, torch.Tensor] = {}
        for name, tensor in vllm_caches.items():
            spec = specs[name]
            if not isinstance(spec, AttentionSpec):
                raise NotImplementedError(f"vllm-ascend has no KV cache for {type(spec).__name__}")
            caches[name] = npu_kv_cache(tensor, spec)
        del vllm_caches
        self.kv_caches.clear()
        bind_kv_cache(caches, self.compilation_config.static_forward_context, self.kv_caches,
                      kv_cache_groups=kv_cache_config.kv_cache_groups)
        return caches

    def _zero_block_ids(self, block_ids: list[int]) -> None:
        # blocks are the second dimension of the [2, blocks, ...] caches
        for cache in self.kv_caches:
            cache[:, block_ids] = 0


class ACLGraphModel:
    """The model in the ACL graph wrapper, when the graph mode has full graphs
    (a mixin over vLLM's GPU or CPU model runner)."""

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

    def capture_model(self) -> int:
        """vLLM's capture of each decode batch size, on a stream of its own.

        vLLM's own capture enters ``graph_capture``, which takes CUDA's and
        XPU's communicators only (HCCL's collectives need no capture context),
        and measures CUDA memory; the graphs' memory is not measured here.
        """
        if self.compilation_config.cudagraph_mode == CUDAGraphMode.NONE:
            return 0
        set_cudagraph_capturing_enabled(True)
        try:
            with npu_graphs.capture_stream():
                for mode, descriptors in self.cudagraph_dispatcher.get_capture_descs():
                    self._capture_cudagraphs(descriptors, cudagraph_runtime_mode=mode)
        finally:
            set_cudagraph_capturing_enabled(False)
        return 0


class NPUModelRunner(NPUKVCacheLayout, ACLGraphModel, GPUModelRunner):
    """vLLM's GPU model runner on an Ascend NPU: batches, sampling, the device
    buffers and the capture of decode graphs are vLLM's own, the KV cache laid
    out for the NPU kernels, the graphs ACL graphs. Its torch.cuda streams and
    events are torch_npu's (``vllm_ascend.patches``)."""


class EmulatedNPUModelRunner(NPUKVCacheLayout, ACLGraphModel, CPUModelRunner):
    """The same on vLLM's CPU runner, for NPU emulation on the host."""

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)
        # the graphs are captured later, with the layers' new method
        widened = linear.widen_bf16_products(self.get_model())
        if widened:
            logger.info("vllm-ascend: no native bfloat16 GEMM on this host; %d bfloat16 "
                        "linear layers multiply %d rows or more in float32 (the NPU's "
                        "accumulation, rounded back)", widened, linear.MIN_ROWS)
