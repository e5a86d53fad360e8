"""Paged-KV attention in plain PyTorch, one request at a time.

vLLM hands the backend a paged KV cache: fixed-size blocks, and per request a
row of the block table naming its blocks in order. K and V of the scheduled
tokens are written through ``slot_mapping`` (``block × block_size + offset``);
each request then reads its whole context back through its block-table row
and attends causally. Prefill, decode, chunked prefill and prefix-cache hits
all take this one path.

This is the place for your device's attention kernel: keep the metadata
builder (it turns vLLM's batch description into what your kernel needs) and
replace ``do_kv_cache_update`` and ``forward``. The loop over requests is
for clarity; a kernel processes the whole batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from vllm.config import VllmConfig
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionLayer,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)
from vllm.v1.attention.backends.registry import register_backend
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheLayout

from vllm_spyre_like import PLUGIN

NAME = "SPYRE_LIKE_ATTN"


# vLLM looks backends up by name in its registry; a dynamic entry is how an
# out-of-tree backend gets one.
@register_backend(NAME)
class SpyreLikeAttentionBackend(AttentionBackend):
    # vLLM calls do_kv_cache_update before forward, as a separate op.
    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float32, torch.bfloat16]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto", "float32", "bfloat16"]

    @staticmethod
    def get_name() -> str:
        return NAME

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        # Your kernel may need e.g. [16] or [MultipleOf(16)].
        return [MultipleOf(1)]

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple[KVCacheLayout, ...]:
        # Block, then token, then head: a block's slots are contiguous, so the
        # cache flattens to [slots, heads, 2 * head_size] without a copy.
        return (KVCacheLayout.LBNHC,)

    @staticmethod
    def get_impl_cls() -> type[SpyreLikeAttentionImpl]:
        return SpyreLikeAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[SpyreLikeAttentionMetadataBuilder]:
        return SpyreLikeAttentionMetadataBuilder


@dataclass
class SpyreLikeAttentionMetadata:
    """One step's batch, as the attention layers of that step see it (host tensors)."""

    num_actual_tokens: int
    # [num_reqs + 1] where each request's query tokens start in the flat batch
    query_start_loc: torch.Tensor
    # [num_reqs] tokens of each request in the cache after this step
    seq_lens: torch.Tensor
    # [num_reqs, max_blocks] cache blocks of each request, in order
    block_table: torch.Tensor
    # [num_tokens] cache slot of each scheduled token; -1 for padding
    slot_mapping: torch.Tensor
    causal: bool = True


class SpyreLikeAttentionMetadataBuilder(
    AttentionMetadataBuilder[SpyreLikeAttentionMetadata]
):
    def __init__(
        self,
        kv_cache_spec: AttentionSpec,
        layer_names: list[str],
        vllm_config: VllmConfig,
        device: torch.device,
    ) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> SpyreLikeAttentionMetadata:
        meta = common_attn_metadata
        if isinstance(meta.causal, torch.Tensor):
            raise NotImplementedError(f"{PLUGIN} attention has no per-request causality")
        n = meta.num_reqs
        return SpyreLikeAttentionMetadata(
            num_actual_tokens=meta.num_actual_tokens,
            query_start_loc=meta.query_start_loc_cpu[: n + 1].to(torch.int64),
            seq_lens=meta.seq_lens[:n].to("cpu", torch.int64),
            block_table=meta.block_table_tensor[:n].to("cpu", torch.int64),
            slot_mapping=meta.slot_mapping,
            causal=bool(meta.causal),
        )


def flat_cache(kv_cache: torch.Tensor) -> torch.Tensor:
    """View a layer's [blocks, kv_heads, block_size, 2 * head] cache as
    [slots, kv_heads, 2 * head]: K in the first half of the last dim, V in the second."""
    blocks, heads, block_size, width = kv_cache.shape
    return kv_cache.permute(0, 2, 1, 3).view(blocks * block_size, heads, width)


class SpyreLikeAttentionImpl(AttentionImpl):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
    ) -> None:
        unsupported = {
            "ALiBi": alibi_slopes is not None,
            "sliding window": sliding_window is not None,
            "logits soft cap": bool(logits_soft_cap),
            "attention sinks": sinks is not None,
            f"attention type {attn_type}": attn_type != AttentionType.DECODER,
        }
        missing = [what for what, used in unsupported.items() if used]
        if missing:
            raise NotImplementedError(
                f"{PLUGIN} attention does not support {', '.join(missing)}"
            )
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type

    def do_kv_cache_update(
        self,
        layer: torch.nn.Module,
        key: torch.Tensor,  # [tokens, kv_heads, head]
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,  # [tokens]
    ) -> None:
        cache = flat_cache(kv_cache)
        slots = slot_mapping.to(torch.int64)
        keep = slots >= 0  # -1 marks padding tokens, which own no slot
        n = slots.shape[0]
        cache[slots[keep], :, : self.head_size] = key[:n][keep]
        cache[slots[keep], :, self.head_size :] = value[:n][keep]

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,  # [tokens, heads * head]
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: SpyreLikeAttentionMetadata | None,
        output: torch.Tensor,  # [tokens, heads * head], written in place
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError(f"{PLUGIN} attention has no fused output quantization")
        if attn_metadata is None:  # profiling run: no cache bound yet
            return output
        cache = flat_cache(kv_cache)
        query = query.view(-1, self.num_heads, self.head_size)
        out = output.view(output.shape[0], self.num_heads, self.head_size)
        meta = attn_metadata
        block_size = kv_cache.shape[2]
        for i in range(meta.seq_lens.shape[0]):
            start, end = int(meta.query_start_loc[i]), int(meta.query_start_loc[i + 1])
            seq_len = int(meta.seq_lens[i])
            # The slot of each of the request's cached positions, through its block table.
            positions = torch.arange(seq_len)
            slots = meta.block_table[i, positions // block_size] * block_size \
                + positions % block_size
            kv = cache[slots].transpose(0, 1)  # [kv_heads, seq_len, 2 * head]
            k, v = kv[..., : self.head_size], kv[..., self.head_size :]
            q = query[start:end].transpose(0, 1)  # [heads, q_len, head]
            # Query token j sits at position seq_len - q_len + j and sees the
            # positions up to its own.
            q_pos = seq_len - (end - start) + torch.arange(end - start)
            mask = positions[None, :] <= q_pos[:, None] if meta.causal else None
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=self.scale,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )
            out[start:end] = attended.transpose(0, 1).to(out.dtype)
        return output
