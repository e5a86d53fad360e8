"""vllm-ascend's model runners: vLLM's GPU runner on an NPU, its CPU runner emulated.

vLLM allocates each layer's cache as one tensor with K and V side by side
per token. The NPU's cache kernels (``npu_scatter_pa_kv_cache``, paged
``npu_fused_infer_attention_score``) take K and V as two contiguous
[blocks, block_size, kv_heads, head_dim] caches, so each layer gets a
[2, blocks, block_size, kv_heads, head_dim] tensor of the same size instead;
both runners share that layout (:class:`NPUKVCacheLayout`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheConfig
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.utils import bind_kv_cache


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


class NPUModelRunner(NPUKVCacheLayout, GPUModelRunner):
    """vLLM's GPU model runner on an Ascend NPU: batches, sampling and the
    device buffers are vLLM's own, the KV cache laid out for the NPU kernels.
    It runs eagerly (no ACL graphs yet). Its torch.cuda streams and events are
    torch_npu's (``vllm_ascend.patches``)."""


class EmulatedNPUModelRunner(NPUKVCacheLayout, CPUModelRunner):
    """The same layout on vLLM's CPU runner, for NPU emulation on the host."""
