"""Attention on the NPU: torch_npu's paged-cache write and fused inference attention.

Per layer and step, two NPU ops:

- ``npu_scatter_pa_kv_cache`` writes the step's K and V into separate K and V
  caches of [blocks, block_size, kv_heads, head_dim] (ND layout, ``cache_mode
  'Norm'``) at each token's slot;
- ``npu_fused_infer_attention_score`` computes attention for the whole batch
  in TND layout: queries [tokens, heads, head_dim] with the cumulative query
  lengths, and the shared 2048x2048 compressed causal mask with
  ``sparse_mode=3`` (each query sees its request's positions up to its own).
  A batch of fresh prompts (no cached context) reads K and V straight from the
  step's tensors; every other batch reads the paged cache through the block
  table, with each request's context length. A decode-only batch takes the
  kernel's incremental path instead: BSH layout, one query token per request,
  the paged cache, no mask. Every form runs as the ``.out`` overload, writing
  straight into vLLM's output buffer.

The metadata builder classifies the batch (fresh prefill, prefix-cache hit,
decode only, chunked prefill) and prepares the host-side length lists the
kernel takes, once per step for all layers. A decode step vLLM pads to the
batch size of an ACL graph carries padded requests (no query token, no
length); the builder gives each one a length of 1. Tokens vLLM writes
nowhere (slot -1: padded and dummy tokens) are written to the null block,
which vLLM hands to no request, because the NPU's cache write takes only
slots in range.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import Any, ClassVar

import torch
from vllm.config import VllmConfig
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionLayer,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)
from vllm.v1.attention.backends.registry import register_backend
from vllm.v1.attention.backends.utils import NULL_BLOCK_ID
from vllm.v1.kv_cache_interface import AttentionSpec
from vllm_plugin_kit.attention import refuse_unsupported

from vllm_ascend import npu_graphs, npu_ops
from vllm_ascend.emulation import COMPRESSED_MASK_SIZE

NAME = "ASCEND_ATTN"


class AttentionState(enum.Enum):
    """What kind of batch a step is, as the NPU kernels distinguish them."""

    PREFILL_NO_CACHE = "prefill without cached context"
    PREFILL_CACHE_HIT = "prefill after a prefix-cache hit"
    DECODE_ONLY = "decode only"
    CHUNKED_PREFILL = "mixed prefill and decode"


def classify(query_lens: list[int], seq_lens: list[int]) -> AttentionState:
    # One query token per request is a decode step, whatever the context: the
    # decode path writes the token's K and V before it reads the cache. vLLM
    # dispatches a step to a decode graph on the query lengths alone, and so
    # must this (a one-token prompt among decodes is still a decode step).
    if all(q == 1 for q in query_lens):
        return AttentionState.DECODE_ONLY
    if all(q == s for q, s in zip(query_lens, seq_lens)):
        return AttentionState.PREFILL_NO_CACHE
    if all(q > 1 for q in query_lens):
        return AttentionState.PREFILL_CACHE_HIT
    return AttentionState.CHUNKED_PREFILL


#: batches of each state built in this process, by state name (for tests and logs)
states_seen: Counter[str] = Counter()


@cache
def compressed_causal_mask(device: torch.device) -> torch.Tensor:
    """The one 2048x2048 int8 mask ``sparse_mode=3`` needs: 1 above the diagonal."""
    ones = torch.ones(COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE, dtype=torch.int8)
    return torch.triu(ones, diagonal=1).to(device)


# vLLM looks backends up by name in its registry; a dynamic entry is how an
# out-of-tree backend gets one.
@register_backend(NAME)
class AscendAttentionBackend(AttentionBackend):
    # The cache write happens in forward, where the step's metadata is at hand.
    forward_includes_kv_cache_update: bool = True
    accept_output_buffer: bool = True
    supported_dtypes: ClassVar[list[torch.dtype]] = [
        torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto", "float16", "bfloat16", "float32"]

    @staticmethod
    def get_name() -> str:
        return NAME

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        # fused attention over a paged cache takes 128 to 512, multiples of 128
        return [MultipleOf(128)]

    @staticmethod
    def get_impl_cls() -> type[AscendAttentionImpl]:
        return AscendAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[AscendMetadataBuilder]:
        return AscendMetadataBuilder


@dataclass
class AscendMetadata:
    """One step's batch as the NPU kernels take it."""

    state: AttentionState
    num_actual_tokens: int
    # host lists: cumulative query ends (TND), and each request's length in tokens
    cumulative_query_lens: list[int]
    seq_lens: list[int]
    block_table: torch.Tensor  # [requests, blocks] int32
    slot_mapping: torch.Tensor  # [actual tokens]
    mask: torch.Tensor


class AscendMetadataBuilder(AttentionMetadataBuilder[AscendMetadata]):
    # ACL graphs hold decode steps only (the fused kernel's decode path, its
    # lengths updated before each replay: vllm_ascend.acl_graph)
    _cudagraph_support: ClassVar[AttentionCGSupport] = \
        AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE

    def __init__(self, kv_cache_spec: AttentionSpec, layer_names: list[str],
                 vllm_config: VllmConfig, device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.block_size = kv_cache_spec.block_size
        self._null_slots = self._null_block_slots(
            vllm_config.scheduler_config.max_num_batched_tokens)

    def _null_block_slots(self, tokens: int) -> torch.Tensor:
        """Slots of the null block, one per token, for tokens vLLM writes nowhere."""
        offsets = torch.arange(tokens, dtype=torch.int64, device=self.device) % self.block_size
        return NULL_BLOCK_ID * self.block_size + offsets

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> AscendMetadata:
        meta = common_attn_metadata
        if isinstance(meta.causal, torch.Tensor) or not meta.causal:
            raise NotImplementedError("vllm-ascend attention serves causal decoders only")
        n = meta.num_reqs
        starts = meta.query_start_loc_cpu[: n + 1].tolist()
        # vLLM keeps a host copy of the lengths (exact without speculative
        # decoding, which this backend does not take): no device-to-host copy
        host_seq_lens = meta.seq_lens_cpu_upper_bound
        seq_lens = (host_seq_lens if host_seq_lens is not None else meta.seq_lens.cpu())[:n]
        seq_lens = seq_lens.tolist()
        query_lens = [b - a for a, b in pairwise(starts)]
        real = n
        while real and query_lens[real - 1] == 0:  # vLLM pads at the end
            real -= 1
        state = classify(query_lens[:real], seq_lens[:real])
        states_seen[state.name] += 1
        slot_mapping = self._slots(meta.slot_mapping[: meta.num_actual_tokens])
        if real < n:
            seq_lens = self._pad(state, seq_lens[:real], n - real,
                                 meta.num_actual_tokens - starts[real])
        return AscendMetadata(
            state=state,
            num_actual_tokens=meta.num_actual_tokens,
            cumulative_query_lens=starts[1:],
            seq_lens=seq_lens,
            block_table=meta.block_table_tensor[:n].to(torch.int32),
            slot_mapping=slot_mapping,
            mask=compressed_causal_mask(self.device),
        )

    def _slots(self, slot_mapping: torch.Tensor) -> torch.Tensor:
        """The step's slots with vLLM's padding marks (-1: padded tokens, dummy
        steps) turned into slots of the null block, which vLLM hands to no
        request: the NPU's cache write takes slots in range only."""
        tokens = slot_mapping.shape[0]
        if tokens > self._null_slots.shape[0]:
            self._null_slots = self._null_block_slots(tokens)
        return torch.where(slot_mapping < 0, self._null_slots[:tokens], slot_mapping,
                           out=slot_mapping)

    @staticmethod
    def _pad(state: AttentionState, seq_lens: list[int], padded: int,
             pad_tokens: int) -> list[int]:
        """Lengths for the requests vLLM adds to fill a decode graph: 1 each, the
        first position of the null block (their block-table rows); their
        outputs are discarded."""
        if state is not AttentionState.DECODE_ONLY or pad_tokens != padded:
            raise RuntimeError(f"vllm-ascend pads decode steps only, one token a request; "
                               f"got {padded} padded requests with {pad_tokens} tokens "
                               f"in a {state.value} step")
        return seq_lens + [1] * padded


class AscendAttentionImpl(AttentionImpl):
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
        refuse_unsupported("vllm-ascend", alibi_slopes, sliding_window, logits_soft_cap, sinks,
                           attn_type, (AttentionType.DECODER,),
                           a_shared_KV_cache=kv_sharing_target_layer_name is not None)
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self._lse: torch.Tensor | None = None

    def _no_lse(self, like: torch.Tensor) -> torch.Tensor:
        """The kernel's softmax_lse output, unused (``softmax_lse_flag`` off)."""
        if self._lse is None or self._lse.device != like.device:
            self._lse = torch.empty(0, dtype=torch.float32, device=like.device)
        return self._lse

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,  # [tokens, heads * head]
        key: torch.Tensor,  # [tokens, kv_heads * head]
        value: torch.Tensor,
        kv_cache: torch.Tensor,  # [2, blocks, block_size, kv_heads, head]
        attn_metadata: AscendMetadata | None,
        output: torch.Tensor,  # [tokens, heads * head], written in place
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("vllm-ascend attention has no fused output quantization")
        if attn_metadata is None:  # profiling run: no cache bound yet
            return output
        meta = attn_metadata
        n = meta.num_actual_tokens
        # the kernels take contiguous inputs; K and V arrive as slices of QKV,
        # and so does Q after a rotary kernel that works in place (the
        # plugin's own): copied only where they are not contiguous
        query = query[:n].contiguous()
        key = key[:n].reshape(n, self.num_kv_heads, self.head_size).contiguous()
        value = value[:n].reshape(n, self.num_kv_heads, self.head_size).contiguous()
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        npu_ops.npu_scatter_pa_kv_cache(key, value, key_cache, value_cache,
                                        meta.slot_mapping, cache_mode="Norm")
        flat = output.view(output.shape[0], -1)
        if meta.state is AttentionState.DECODE_ONLY:
            # one query token per request: the kernel's incremental path, in
            # BSH layout over the paged cache, no mask needed
            blocks, block_size = key_cache.shape[:2]
            call = DecodeCall(
                query=query.view(n, 1, -1),
                key_cache=key_cache.view(blocks, block_size, -1),
                value_cache=value_cache.view(blocks, block_size, -1),
                block_size=block_size, num_heads=self.num_heads,
                num_kv_heads=self.num_kv_heads, scale=self.scale,
                out=flat[:n].view(n, 1, -1), lse=self._no_lse(query))
            if npu_graphs.is_capturing():
                _capture_decode(call, layer, meta)
            else:
                call.launch(meta.block_table, meta.seq_lens)
        else:
            if npu_graphs.is_capturing():
                raise RuntimeError(f"vllm-ascend captures decode steps only into ACL graphs, "
                                   f"not a {meta.state.value} step")
            common = dict(
                atten_mask=meta.mask, actual_seq_lengths=meta.cumulative_query_lens,
                num_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
                scale=self.scale, input_layout="TND", sparse_mode=3,
                out=[flat[:n].view(n, self.num_heads, self.head_size), self._no_lse(query)])
            query = query.view(n, self.num_heads, self.head_size)
            if meta.state is AttentionState.PREFILL_NO_CACHE:
                npu_ops.npu_fused_infer_attention_score.out(
                    query, key, value, actual_seq_lengths_kv=meta.cumulative_query_lens,
                    **common)
            else:
                blocks, block_size = key_cache.shape[:2]
                npu_ops.npu_fused_infer_attention_score.out(
                    query, key_cache.view(blocks, block_size, -1),
                    value_cache.view(blocks, block_size, -1), block_table=meta.block_table,
                    block_size=block_size, actual_seq_lengths_kv=meta.seq_lens, **common)
        if flat.shape[0] > n:
            flat[n:] = 0  # padded rows: never uninitialised memory in the next layer
        return output


# --- decode attention inside an ACL graph -------------------------------------------

@dataclass
class DecodeCall:
    """A decode step's attention kernel, but for the per-step block table and lengths."""

    query: torch.Tensor  # [requests, 1, heads * head]
    key_cache: torch.Tensor  # [blocks, block_size, kv_heads * head]
    value_cache: torch.Tensor
    block_size: int
    num_heads: int
    num_kv_heads: int
    scale: float
    out: torch.Tensor  # [requests, 1, heads * head]
    lse: torch.Tensor
    #: the kernel's scratch memory, held by a captured graph for its replays
    workspace: torch.Tensor | None = None

    def _arguments(self, block_table: torch.Tensor, seq_lens: list[int]) -> dict[str, Any]:
        return dict(block_table=block_table, block_size=self.block_size,
                    actual_seq_lengths_kv=seq_lens, num_heads=self.num_heads,
                    num_key_value_heads=self.num_kv_heads, scale=self.scale,
                    input_layout="BSH", sparse_mode=0)

    def reserve_workspace(self, block_table: torch.Tensor, seq_lens: list[int]) -> None:
        """The most scratch memory the kernel needs for this batch, allocated once
        at capture, as torch_npu's graph handler does, so replays never allocate."""
        self.workspace = npu_ops._npu_fused_infer_attention_score_get_max_workspace(
            self.query, self.key_cache, self.value_cache,
            **self._arguments(block_table, seq_lens))

    def launch(self, block_table: torch.Tensor, seq_lens: list[int]) -> None:
        npu_ops.npu_fused_infer_attention_score.out(
            self.query, self.key_cache, self.value_cache, workspace=self.workspace,
            out=[self.out, self.lse], **self._arguments(block_table, seq_lens))


@dataclass
class GraphTask:
    """One layer's attention kernel in a captured graph, and its task group."""

    layer_name: str
    call: DecodeCall
    handle: Any


#: the attention kernels of the capture underway (:func:`recording_graph_tasks`)
_graph_tasks: list[GraphTask] | None = None


@contextmanager
def recording_graph_tasks() -> Iterator[list[GraphTask]]:
    """Collect the attention kernels an ACL graph capture records, to update them
    before each replay (:func:`update_graph_tasks`)."""
    global _graph_tasks
    if _graph_tasks is not None:
        raise RuntimeError("attention graph tasks are already being recorded")
    _graph_tasks = []
    try:
        yield _graph_tasks
    finally:
        _graph_tasks = None


def _capture_decode(call: DecodeCall, layer: Any, meta: AscendMetadata) -> None:
    # The graph freezes the kernel's host arguments, the lengths among them:
    # record it as a task group of its own, reissued with each step's lengths.
    if _graph_tasks is None:
        raise RuntimeError("vllm-ascend attention was captured into an ACL graph outside "
                           "ACLGraphWrapper, which alone updates its lengths before replay")
    call.reserve_workspace(meta.block_table, meta.seq_lens)
    stream = npu_graphs.current_stream()
    npu_graphs.task_group_begin(stream)
    call.launch(meta.block_table, meta.seq_lens)
    _graph_tasks.append(GraphTask(layer.layer_name, call, npu_graphs.task_group_end(stream)))


def update_graph_tasks(tasks: list[GraphTask], attn_metadata: dict[str, Any]) -> None:
    """Reissue each captured attention kernel with this step's block table and lengths."""
    stream = npu_graphs.current_stream()
    for task in tasks:
        meta = attn_metadata[task.layer_name]
        batch = task.call.query.shape[0]
        if meta.state is not AttentionState.DECODE_ONLY or len(meta.seq_lens) != batch:
            raise RuntimeError(
                f"an ACL graph of a {batch}-request decode step cannot replay a "
                f"{len(meta.seq_lens)}-request {meta.state.value} step")
        npu_graphs.task_update_begin(stream, task.handle)
        task.call.launch(meta.block_table, meta.seq_lens)
        npu_graphs.task_update_end(stream)
