"""Paged-KV attention in plain PyTorch, for a device stood in for on the host.

K and V are written into the paged cache through ``slot_mapping`` and read
back through the block table, so prefill, decode, chunked prefill and
prefix-cache hits all take the same path: every query token attends to the
cached keys of its request up to its own position.

The batch arrives reordered by vLLM with decodes (one query token) first.
Decodes run as one batched product over their gathered context; the other
requests (prefills, chunks, prefix-cache hits) are padded to the longest query
among them and run as one masked ``scaled_dot_product_attention``. The index
tensors are built once per step in the metadata builder and shared by every
layer, so no Python loop runs over requests or tokens in the hot path. K/V rows
are read and written with ``index_select`` / ``index_copy_`` on whole rows,
several times faster than advanced indexing, which walks element by element.

Encoder-only layers (BERT-style embedding models) keep no cache: their
requests are whole prompts in one step, so a request's keys are its own tokens
of the step, read from ``key`` and ``value`` in place of the cache, unmasked.

A plugin registers a subclass of :class:`HostAttentionBackend` under its own
name (vLLM looks backends up by name); a device's own kernel replaces
``do_kv_cache_update`` and ``forward`` and keeps the metadata builder.
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
from vllm.v1.attention.backends.utils import split_decodes_and_prefills
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheLayout

#: what the host attention computes: causal decoder and unmasked encoder-only layers
ATTENTION_TYPES = (AttentionType.DECODER, AttentionType.ENCODER_ONLY)


def refuse_unsupported(owner: str, alibi_slopes: list[float] | None,
                       sliding_window: int | None, logits_soft_cap: float | None,
                       sinks: torch.Tensor | None, attn_type: str,
                       attn_types: tuple[str, ...] = ATTENTION_TYPES,
                       **more: bool) -> None:
    """Raise NotImplementedError naming every feature an attention layer asks for
    (vLLM's ``AttentionImpl`` arguments, and ``more`` of the owner's own) that
    ``owner``'s attention lacks: it computes ``attn_types``, nothing else."""
    features = {
        "ALiBi": alibi_slopes is not None,
        "sliding window": sliding_window is not None,
        "logits soft cap": bool(logits_soft_cap),
        "attention sinks": sinks is not None,
        f"attention type {attn_type}": attn_type not in attn_types,
        **{name.replace("_", " "): used for name, used in more.items()},
    }
    missing = [name for name, used in features.items() if used]
    if missing:
        raise NotImplementedError(f"{owner} attention does not support {', '.join(missing)}")


class HostAttentionBackend(AttentionBackend):
    """The backend; a plugin's subclass sets :attr:`NAME` (and :attr:`IMPL`, to
    name itself in refusals) and registers it."""

    NAME: ClassVar[str] = "HOST_PAGED_ATTN"
    IMPL: ClassVar[type[HostAttentionImpl]]
    # vLLM calls do_kv_cache_update before forward, as a separate op.
    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto", "bfloat16", "float32"]

    @classmethod
    def get_name(cls) -> str:
        return cls.NAME

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return [MultipleOf(1)]

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple[KVCacheLayout, ...]:
        # Block, then token, then head: the slots of one block are contiguous,
        # so the cache flattens to [slots, heads, 2 * head_size] without a copy.
        return (KVCacheLayout.LBNHC,)

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type in ATTENTION_TYPES

    @classmethod
    def supports_non_causal(cls) -> bool:
        return True

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def get_impl_cls(cls) -> type[HostAttentionImpl]:
        return cls.IMPL

    @staticmethod
    def get_builder_cls() -> type[HostAttentionMetadataBuilder]:
        return HostAttentionMetadataBuilder


@dataclass
class Part:
    """Index tensors for one part of the batch (decodes or the rest)."""

    # [R, S] cache slot of each context position; invalid positions point at 0.
    kv_slots: torch.Tensor
    # [R, Q, S] True where a query may attend to a context position.
    mask: torch.Tensor
    # [R, Q] index of each padded query row in the flat token batch; padding
    # rows repeat a valid index and are dropped by ``query_valid``.
    query_index: torch.Tensor
    # [R, Q] True for real query rows.
    query_valid: torch.Tensor
    # first flat token of this part and its number of tokens
    token_start: int
    num_tokens: int
    # [R, Q] absolute position of each query row
    query_pos: torch.Tensor | None = None
    # ``mask`` (narrowed to a sliding window) repeated for G query heads per KV
    # head, built once per step for every (G, window) the layers ask for
    _grouped_masks: dict[tuple[int, int | None], torch.Tensor] = field(default_factory=dict)

    def grouped_mask(self, group: int, window: int | None = None) -> torch.Tensor:
        """[R, 1, G*Q, S]: the mask for queries folded as (head in group, position);
        with a ``window``, a query sees only the ``window`` positions ending at its own."""
        key = (group, window)
        if key not in self._grouped_masks:
            mask = self.mask
            if window is not None:  # padding rows keep their keys (they are dropped)
                assert self.query_pos is not None, "a sliding window needs query positions"
                keys = torch.arange(mask.shape[-1])
                mask = mask & ((keys[None, None, :] > self.query_pos[:, :, None] - window)
                               | ~self.query_valid[:, :, None])
            r, q, s = mask.shape
            self._grouped_masks[key] = (
                mask[:, None].expand(r, group, q, s).reshape(r, 1, group * q, s)
            )
        return self._grouped_masks[key]


@dataclass
class HostAttentionMetadata:
    num_actual_tokens: int
    slot_mapping: torch.Tensor
    decode: Part | None
    prefill: Part | None


def build_part(
    query_start_loc: torch.Tensor,  # of this part, starting at 0
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    block_size: int,
    token_offset: int,
    causal: bool,
) -> Part:
    query_lens = query_start_loc[1:] - query_start_loc[:-1]
    context_lens = seq_lens - query_lens  # tokens already in the cache
    max_q = int(query_lens.max())
    max_s = int(seq_lens.max())
    positions = torch.arange(max_s, dtype=torch.int64)
    kv_valid = positions[None, :] < seq_lens[:, None]

    rows = torch.arange(max_q, dtype=torch.int64)
    query_valid = rows[None, :] < query_lens[:, None]
    query_index = query_start_loc[:-1, None].to(torch.int64) + rows[None, :]
    query_index = torch.where(query_valid, query_index, query_start_loc[:-1, None])
    if causal:
        blocks = block_table[:, : (max_s + block_size - 1) // block_size].to(torch.int64)
        kv_slots = blocks.gather(1, (positions // block_size).expand(len(seq_lens), -1))
        kv_slots = torch.where(kv_valid, kv_slots * block_size + positions % block_size, 0)
    elif bool((context_lens == 0).all()):
        # encoder-only: the keys are the request's own tokens of this step
        kv_slots = query_index + token_offset
    else:
        raise NotImplementedError("host attention runs non-causal layers on whole prompts "
                                  "only, not on a prompt with tokens already cached")
    mask = kv_valid[:, None, :].expand(-1, max_q, -1)
    query_pos = context_lens[:, None] + rows[None, :]  # absolute position
    if causal:
        mask = mask & (positions[None, None, :] <= query_pos[:, :, None])
    # Padding rows get one visible key so softmax stays finite; they are dropped.
    mask = mask | ~query_valid[:, :, None] & (positions == 0)[None, None, :]
    return Part(
        kv_slots=kv_slots,
        mask=mask,
        query_index=query_index + token_offset,
        query_valid=query_valid,
        token_start=token_offset,
        num_tokens=int(query_start_loc[-1] - query_start_loc[0]),
        query_pos=query_pos,
    )


def build_metadata(meta: CommonAttentionMetadata, block_size: int) -> HostAttentionMetadata:
    """Split a reordered batch into its decodes and the rest, and index both."""
    causal = meta.causal
    if isinstance(causal, torch.Tensor):
        raise NotImplementedError("paged host attention has no per-request causality")
    num_decodes, _, num_decode_tokens, _ = split_decodes_and_prefills(meta, decode_threshold=1)
    num_reqs = meta.num_reqs
    qsl = meta.query_start_loc_cpu[: num_reqs + 1].to(torch.int64)
    seq_lens = meta.seq_lens[:num_reqs].to("cpu", torch.int64)
    table = meta.block_table_tensor[:num_reqs].to("cpu")

    decode = prefill = None
    if num_decodes:
        decode = build_part(
            qsl[: num_decodes + 1], seq_lens[:num_decodes], table[:num_decodes],
            block_size, 0, bool(causal),
        )
    if num_decodes < num_reqs:
        rest = qsl[num_decodes:] - qsl[num_decodes]
        prefill = build_part(
            rest, seq_lens[num_decodes:], table[num_decodes:], block_size,
            num_decode_tokens, bool(causal),
        )
    return HostAttentionMetadata(
        num_actual_tokens=meta.num_actual_tokens,
        slot_mapping=meta.slot_mapping,
        decode=decode,
        prefill=prefill,
    )


class HostAttentionMetadataBuilder(AttentionMetadataBuilder[HostAttentionMetadata]):
    def __init__(
        self,
        kv_cache_spec: AttentionSpec,
        layer_names: list[str],
        vllm_config: VllmConfig,
        device: torch.device,
    ) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.block_size = kv_cache_spec.block_size
        # Ask vLLM to put single-token requests (decodes) first in the batch.
        self._init_reorder_batch_threshold(1)

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> HostAttentionMetadata:
        return build_metadata(common_attn_metadata, self.block_size)


def flat_cache(kv_cache: torch.Tensor) -> torch.Tensor:
    """View a layer's [blocks, kv_heads, block_size, 2 * head] cache as
    [slots, kv_heads, 2 * head]: K in the first half of the last dim, V in the second."""
    blocks, heads, block_size, width = kv_cache.shape
    return kv_cache.permute(0, 2, 1, 3).view(blocks * block_size, heads, width)


class HostAttentionImpl(AttentionImpl):
    #: how refusals name the backend's owner (a plugin's subclass sets it)
    OWNER: ClassVar[str] = "host"

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
        refuse_unsupported(self.OWNER, alibi_slopes, None, logits_soft_cap, sinks, attn_type)
        self.encoder_only = attn_type == AttentionType.ENCODER_ONLY
        #: a query sees this many positions, ending at its own (None: all)
        self.sliding_window = sliding_window
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
        if self.encoder_only:  # keeps no cache
            return
        n = slot_mapping.shape[0]
        # Slots of -1 mark padding tokens that own no cache entry.
        slots = slot_mapping.to(torch.int64)
        keep = slots >= 0
        if not bool(keep.all()):
            slots, key, value = slots[keep], key[:n][keep], value[:n][keep]
        n = slots.shape[0]
        shape = (n, self.num_kv_heads, self.head_size)
        kv = torch.cat((key[:n].reshape(shape), value[:n].reshape(shape)), dim=-1)
        # index_copy_ of whole [Hkv * 2D] rows: one pass for K and V together
        flat = flat_cache(kv_cache).view(-1, kv.shape[1] * kv.shape[2])
        flat.index_copy_(0, slots, kv.view(n, flat.shape[1]).to(flat.dtype))

    def _attend(self, query: torch.Tensor, cache: torch.Tensor, part: Part,
                output: torch.Tensor) -> None:
        rows, q_len = part.query_index.shape
        kv = cache.view(cache.shape[0], -1).index_select(0, part.kv_slots.view(-1))
        kv = kv.view(*part.kv_slots.shape, *cache.shape[1:])  # [R, S, Hkv, 2D]
        k = kv[..., : self.head_size].transpose(1, 2)  # [R, Hkv, S, D]
        v = kv[..., self.head_size :].transpose(1, 2)
        # Grouped-query attention without repeating K and V: the G query heads
        # that share a KV head become G x Q query rows of that head (query
        # head h reads KV head h // G). Several times faster on the CPU than
        # SDPA's enable_gqa, which expands K and V.
        group = self.num_heads // self.num_kv_heads
        q = query.index_select(0, part.query_index.view(-1))  # [R * Q, Hq, D]
        q = q.view(rows, q_len, self.num_kv_heads, group, self.head_size)
        q = q.permute(0, 2, 3, 1, 4).reshape(rows, self.num_kv_heads, group * q_len, -1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=part.grouped_mask(group, self.sliding_window), scale=self.scale
        )  # [R, Hkv, G*Q, D]
        if q_len == 1 and rows == part.num_tokens:  # decodes: one row each, in order
            out = out.reshape(rows, -1)
        else:
            out = out.view(rows, self.num_kv_heads, group, q_len, self.head_size)
            out = out.permute(0, 3, 1, 2, 4)[part.query_valid]  # [tokens, Hkv, G, D]
        output[part.token_start : part.token_start + part.num_tokens] = out.reshape(
            part.num_tokens, -1
        ).to(output.dtype)

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,  # [tokens, heads * head]
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: HostAttentionMetadata | None,
        output: torch.Tensor,  # [tokens, heads * head], written in place
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError(f"{self.OWNER} attention has no fused output "
                                      "quantization")
        if attn_metadata is None:  # profiling run: no cache bound yet
            return output
        if self.encoder_only:  # the step's own K and V, indexed by token as the cache by slot
            n = attn_metadata.num_actual_tokens
            shape = (n, self.num_kv_heads, self.head_size)
            cache = torch.cat((key[:n].reshape(shape), value[:n].reshape(shape)), dim=-1)
        else:
            cache = flat_cache(kv_cache)
        query = query.view(-1, self.num_heads, self.head_size)
        out = output.view(output.shape[0], -1)
        for part in (attn_metadata.decode, attn_metadata.prefill):
            if part is not None:
                self._attend(query, cache, part, out)
        # Rows of padded tokens (a step padded to a compiled size) are
        # uninitialised memory; left so, their NaNs and denormals flow into the
        # next layers' products and slow them down.
        out[attn_metadata.num_actual_tokens:] = 0
        return output


HostAttentionBackend.IMPL = HostAttentionImpl
