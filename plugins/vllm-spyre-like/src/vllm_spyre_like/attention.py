"""Paged-KV attention in plain PyTorch, on a padded batch, as a static-shape kernel runs.

vLLM hands the backend a paged KV cache: fixed-size blocks, and per request a
row of the block table naming its blocks in order. K and V of the scheduled
tokens are written through ``slot_mapping`` (``block × block_size + offset``);
padding tokens have slot -1 and write nothing.

Attention then runs once per layer for the whole step: the requests' query
tokens are laid out as a [requests, longest query] batch and their cached
context as [requests, longest context] (gathered through the block table),
with a mask that lets each query see its own request's positions up to its
own. Padded query rows are dropped from the output. Prefill, decode, chunked
prefill and prefix-cache hits all take this one path, and the index tensors
are built once per step in the metadata builder, shared by every layer.

This is the place for your device's attention kernel: keep the metadata
builder (it turns vLLM's batch description into what your kernel needs) and
replace ``do_kv_cache_update`` and ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # [requests, longest context] cache slot of each request's positions (0 past its end)
    kv_slots: torch.Tensor
    # [requests, longest query, longest context] what each query row may see
    mask: torch.Tensor
    # [requests, longest query] flat token of each query row, and which rows are real
    query_index: torch.Tensor
    query_valid: torch.Tensor
    slot_mapping: torch.Tensor  # [tokens] cache slot of each token; -1 for padding
    # the mask repeated for G query heads per KV head, built once per step
    grouped_masks: dict[int, torch.Tensor] = field(default_factory=dict)

    def grouped_mask(self, group: int) -> torch.Tensor:
        """[requests, 1, G × longest query, longest context], rows ordered (head, query)."""
        if group not in self.grouped_masks:
            r, q, s = self.mask.shape
            self.grouped_masks[group] = \
                self.mask[:, None].expand(r, group, q, s).reshape(r, 1, group * q, s)
        return self.grouped_masks[group]


def padded_batch(query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                 block_table: torch.Tensor, block_size: int, causal: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """kv_slots, mask, query_index and query_valid of a step (see the metadata)."""
    query_lens = query_start_loc[1:] - query_start_loc[:-1]
    positions = torch.arange(int(seq_lens.max()))
    kv_valid = positions[None, :] < seq_lens[:, None]
    columns = (positions // block_size).clamp(max=block_table.shape[1] - 1)
    kv_slots = block_table[:, columns] * block_size + positions % block_size
    kv_slots = kv_slots.masked_fill(~kv_valid, 0)
    rows = torch.arange(int(query_lens.max()))
    query_valid = rows[None, :] < query_lens[:, None]
    query_index = torch.where(query_valid, query_start_loc[:-1, None] + rows[None, :],
                              query_start_loc[:-1, None])
    mask = kv_valid[:, None, :].expand(-1, rows.shape[0], -1)
    if causal:
        # query row j of a request sits at position seq_len - query_len + j
        query_pos = (seq_lens - query_lens)[:, None] + rows[None, :]
        mask = mask & (positions[None, None, :] <= query_pos[:, :, None])
    # a padded row sees position 0, so its softmax stays finite; it is dropped
    mask = mask | (~query_valid[:, :, None] & (positions == 0)[None, None, :])
    return kv_slots, mask, query_index, query_valid


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
        kv_slots, mask, query_index, query_valid = padded_batch(
            meta.query_start_loc_cpu[: n + 1].to(torch.int64),
            meta.seq_lens[:n].to("cpu", torch.int64),
            meta.block_table_tensor[:n].to("cpu", torch.int64),
            self.kv_cache_spec.block_size, bool(meta.causal))
        return SpyreLikeAttentionMetadata(
            num_actual_tokens=meta.num_actual_tokens, kv_slots=kv_slots, mask=mask,
            query_index=query_index, query_valid=query_valid,
            slot_mapping=meta.slot_mapping,
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
        meta = attn_metadata
        cache = flat_cache(kv_cache)
        kv = cache[meta.kv_slots].transpose(1, 2)  # [reqs, kv_heads, ctx, 2 * head]
        k, v = kv[..., : self.head_size], kv[..., self.head_size :]
        # The G query heads of one KV head become G x Q rows of one attention
        # call, instead of SDPA's enable_gqa, which copies K and V G times.
        reqs, q_len = meta.query_index.shape
        group = self.num_heads // self.num_kv_heads
        q = query.view(-1, self.num_heads, self.head_size)[meta.query_index]
        q = q.view(reqs, q_len, self.num_kv_heads, group, self.head_size)
        q = q.permute(0, 2, 3, 1, 4).reshape(reqs, self.num_kv_heads, group * q_len, -1)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=meta.grouped_mask(group), scale=self.scale)
        attended = attended.view(reqs, self.num_kv_heads, group, q_len, self.head_size)
        attended = attended.permute(0, 3, 1, 2, 4)[meta.query_valid]  # [tokens, kv, G, head]
        n = meta.num_actual_tokens
        flat = output.view(output.shape[0], -1)
        flat[:n] = attended.reshape(n, -1).to(output.dtype)
        # Padded tokens' rows are uninitialised memory; left so, their NaNs and
        # denormals flow into the next layers' matrix products and slow them down.
        flat[n:] = 0
        return output
