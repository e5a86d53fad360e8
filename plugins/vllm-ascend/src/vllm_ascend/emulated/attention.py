"""References of torch_npu's paged KV cache write and fused attention kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vllm_ascend.emulated.rules import float32_relaxation, unsupported

#: The ``sparse_mode`` 2, 3 and 4 masks are this size: the kernel derives each
#: request's causal mask from one shared upper-triangular block.
COMPRESSED_MASK_SIZE = 2048


#: Block sizes of a paged KV cache the fused attention reads: its prompt kernel
#: (Q_S > 1) takes 128 to 512, multiples of 128 (its incremental one, any multiple
#: of 16 up to 512; one cache serves both, so every paged call is held to the first).
PAGED_BLOCK_SIZES = range(128, 513, 128)


def npu_scatter_pa_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                            value_cache: torch.Tensor, slot_mapping: torch.Tensor, *,
                            compress_lens: torch.Tensor | None = None,
                            compress_seq_offsets: torch.Tensor | None = None,
                            seq_lens: torch.Tensor | None = None,
                            cache_mode: str | None = "PA_NZ") -> None:
    """Write each token's K and V at its slot (block · block_size + offset), in place.

    Only the ND layout (``cache_mode`` 'Norm' or None: caches of
    [blocks, block_size, heads, head_dim]) is emulated; 'PA_NZ' is the
    kernel's default, so the plugin always passes 'Norm'.
    """
    unsupported("npu_scatter_pa_kv_cache", compress_lens=compress_lens,
                 compress_seq_offsets=compress_seq_offsets, seq_lens=seq_lens)
    if cache_mode not in ("Norm", None):
        raise NotImplementedError(f"npu_scatter_pa_kv_cache: cache_mode={cache_mode!r} (NZ) "
                                  "is not emulated; pass cache_mode='Norm'")
    if key.dim() != 3 or value.dim() != 3 or key_cache.dim() != 4 or value_cache.dim() != 4:
        raise ValueError("npu_scatter_pa_kv_cache: key/value must be 3-D and caches 4-D")
    if len({key.dtype, value.dtype, key_cache.dtype, value_cache.dtype}) != 1:
        raise ValueError("npu_scatter_pa_kv_cache: key, value and caches must share a dtype")
    if not (key.is_contiguous() and value.is_contiguous() and key_cache.is_contiguous()
            and value_cache.is_contiguous()):
        raise ValueError("npu_scatter_pa_kv_cache: inputs must be contiguous")
    if key.shape[:2] != value.shape[:2] or slot_mapping.shape != (key.shape[0],):
        raise ValueError("npu_scatter_pa_kv_cache: key, value and slot_mapping disagree on "
                         "the number of tokens")
    slots = slot_mapping.long()
    capacity = key_cache.shape[0] * key_cache.shape[1]
    if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= capacity):
        raise ValueError(f"npu_scatter_pa_kv_cache: slots must lie in [0, {capacity - 1}]")
    key_cache.view(capacity, *key_cache.shape[2:])[slots] = key
    value_cache.view(capacity, *value_cache.shape[2:])[slots] = value


_checked_masks: dict[tuple[int, int], bool] = {}


def _check_compressed_mask(mask: torch.Tensor | None, sparse_mode: int) -> None:
    """Modes 2-4 need the shared 2048² upper-triangular mask (1 = masked out)."""
    size = COMPRESSED_MASK_SIZE
    if mask is None or mask.shape[-2:] != (size, size) or mask.dim() > 4 or \
            any(d != 1 for d in mask.shape[:-2]):
        raise ValueError(f"sparse_mode={sparse_mode} needs atten_mask of shape ({size}, "
                         f"{size}), (1, {size}, {size}) or (1, 1, {size}, {size})")
    if mask.dtype not in (torch.bool, torch.int8, torch.uint8):
        raise ValueError(f"atten_mask must be bool, int8 or uint8, not {mask.dtype}")
    key = (id(mask), mask.data_ptr())  # the plugin builds its mask once per device
    if key not in _checked_masks:
        expected = torch.triu(torch.ones(size, size, dtype=torch.bool), diagonal=1)
        if not torch.equal(mask.reshape(size, size).bool(), expected):
            raise ValueError("atten_mask is not the compressed causal mask "
                             "(upper triangle above the diagonal set)")
        _checked_masks[key] = True


def _cumulative(lengths: Sequence[int], name: str) -> list[int]:
    values = [int(v) for v in lengths]
    if any(b < a for a, b in zip([0, *values], values)):
        raise ValueError(f"{name} in TND layout must be cumulative (non-decreasing)")
    return values


def npu_fused_infer_attention_score(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
    pse_shift: torch.Tensor | None = None, atten_mask: torch.Tensor | None = None,
    actual_seq_lengths: Sequence[int] | None = None,
    actual_seq_lengths_kv: Sequence[int] | None = None,
    dequant_scale1: torch.Tensor | None = None, quant_scale1: torch.Tensor | None = None,
    dequant_scale2: torch.Tensor | None = None, quant_scale2: torch.Tensor | None = None,
    quant_offset2: torch.Tensor | None = None, antiquant_scale: torch.Tensor | None = None,
    antiquant_offset: torch.Tensor | None = None, block_table: torch.Tensor | None = None,
    query_padding_size: torch.Tensor | None = None,
    kv_padding_size: torch.Tensor | None = None,
    key_antiquant_scale: torch.Tensor | None = None,
    key_antiquant_offset: torch.Tensor | None = None,
    value_antiquant_scale: torch.Tensor | None = None,
    value_antiquant_offset: torch.Tensor | None = None,
    key_shared_prefix: torch.Tensor | None = None,
    value_shared_prefix: torch.Tensor | None = None,
    actual_shared_prefix_len: torch.Tensor | None = None,
    query_rope: torch.Tensor | None = None, key_rope: torch.Tensor | None = None,
    key_rope_antiquant_scale: torch.Tensor | None = None,
    num_heads: int = 1, scale: float = 1.0, pre_tokens: int = 2147483647,
    next_tokens: int = 2147483647, input_layout: str = "BSH",
    num_key_value_heads: int = 0, sparse_mode: int = 0, inner_precise: int = 0,
    block_size: int = 0, antiquant_mode: int = 0, softmax_lse_flag: bool = False,
    key_antiquant_mode: int = 0, value_antiquant_mode: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): softmax(scale · QKᵀ + mask) · V for a batch of requests.

    Emulated: ``input_layout="TND"`` (query [tokens, heads, head_dim] with
    ``actual_seq_lengths`` the cumulative query lengths, whose count is the
    batch), with K/V either as the same TND tensors (``actual_seq_lengths_kv``
    cumulative too) or as a paged cache with ``block_table`` (K/V
    [blocks, block_size, kv_heads · head_dim] or [blocks, kv_heads,
    block_size, head_dim], ``actual_seq_lengths_kv`` per request), and
    ``sparse_mode`` 0 (no mask) or 3 (rightDownCausal: query row i of a request
    with q query and s context tokens sees positions ≤ s - q + i, given the
    compressed 2048² mask). GQA through ``num_key_value_heads``.

    ``input_layout="BSH"`` with a paged cache is the incremental (decode)
    form: query [batch, q_len, heads · head_dim], every request q_len query
    tokens (``actual_seq_lengths`` None), the last of its
    ``actual_seq_lengths_kv`` positions; out [batch, q_len, heads · head_dim],
    lse [batch, heads, q_len, 1].
    """
    unsupported(
        "npu_fused_infer_attention_score", pse_shift=pse_shift, dequant_scale1=dequant_scale1,
        quant_scale1=quant_scale1, dequant_scale2=dequant_scale2, quant_scale2=quant_scale2,
        quant_offset2=quant_offset2, antiquant_scale=antiquant_scale,
        antiquant_offset=antiquant_offset, query_padding_size=query_padding_size,
        kv_padding_size=kv_padding_size, key_antiquant_scale=key_antiquant_scale,
        key_antiquant_offset=key_antiquant_offset, value_antiquant_scale=value_antiquant_scale,
        value_antiquant_offset=value_antiquant_offset, key_shared_prefix=key_shared_prefix,
        value_shared_prefix=value_shared_prefix,
        actual_shared_prefix_len=actual_shared_prefix_len, query_rope=query_rope,
        key_rope=key_rope, key_rope_antiquant_scale=key_rope_antiquant_scale)
    if not query.is_contiguous():
        raise ValueError(f"npu_fused_infer_attention_score: query {tuple(query.shape)} of "
                         f"strides {query.stride()} must be contiguous")
    if input_layout == "BSH":
        if block_table is None or actual_seq_lengths is not None or query.dim() != 3:
            raise NotImplementedError("input_layout='BSH' is emulated for a paged cache "
                                      "(block_table) with q_len tokens in every request "
                                      "(actual_seq_lengths None)")
        if num_heads <= 0 or query.shape[2] % num_heads:
            raise ValueError(f"BSH query {tuple(query.shape)} does not hold {num_heads} heads")
        batch, q_len = query.shape[:2]
        out, lse = npu_fused_infer_attention_score(
            query.reshape(batch * q_len, num_heads, -1), key, value, atten_mask=atten_mask,
            actual_seq_lengths=[q_len * (i + 1) for i in range(batch)],
            actual_seq_lengths_kv=actual_seq_lengths_kv, block_table=block_table,
            num_heads=num_heads, scale=scale, input_layout="TND",
            num_key_value_heads=num_key_value_heads, sparse_mode=sparse_mode,
            block_size=block_size, softmax_lse_flag=softmax_lse_flag)
        if softmax_lse_flag:
            lse = lse.view(batch, q_len, num_heads, 1).transpose(1, 2).contiguous()
        return out.reshape(batch, q_len, -1), lse
    if input_layout != "TND":
        raise NotImplementedError(f"input_layout={input_layout!r} is not emulated; use 'TND' "
                                  "(or 'BSH' for decode over a paged cache)")
    if query.dtype == torch.float32:
        float32_relaxation("npu_fused_infer_attention_score", "query, key and value")
    elif query.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"npu_fused_infer_attention_score: query must be float16 or bfloat16 "
                         f"(int8 only with quantization arguments), not {query.dtype}")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(f"npu_fused_infer_attention_score: key and value must be "
                         f"{query.dtype} like the query, not {key.dtype} and {value.dtype}")
    if num_heads <= 0:
        raise ValueError(f"num_heads should be greater than 0, but got {num_heads}")
    kv_heads = num_key_value_heads or num_heads
    if num_heads % kv_heads or num_heads // kv_heads > 64:
        raise ValueError(f"num_heads={num_heads} must be a multiple of num_key_value_heads="
                         f"{kv_heads}, at most 64 times it")
    if sparse_mode == 3:
        _check_compressed_mask(atten_mask, sparse_mode)
    elif sparse_mode == 0:
        if atten_mask is not None:
            raise NotImplementedError("sparse_mode=0 with an explicit atten_mask is not emulated")
    else:
        raise NotImplementedError(f"sparse_mode={sparse_mode} is not emulated (0 and 3 are)")
    if actual_seq_lengths is None or actual_seq_lengths_kv is None:
        raise ValueError("TND layout needs actual_seq_lengths and actual_seq_lengths_kv")
    if query.dim() != 3 or query.shape[1] != num_heads:
        raise ValueError(f"TND query must be [tokens, {num_heads}, head_dim], "
                         f"not {tuple(query.shape)}")
    q_ends = _cumulative(actual_seq_lengths, "actual_seq_lengths")
    if q_ends and q_ends[-1] > query.shape[0]:
        raise ValueError("actual_seq_lengths ends past the query's tokens")
    batch, head_dim = len(q_ends), query.shape[-1]
    q_starts = [0, *q_ends[:-1]]
    q_lens = torch.tensor([e - s for s, e in zip(q_starts, q_ends)], dtype=torch.long)

    if block_table is not None:
        if block_table.dtype != torch.int32:
            raise ValueError(f"block_table must be int32, not {block_table.dtype}")
        if block_size not in PAGED_BLOCK_SIZES:
            raise ValueError(f"paged attention: block_size={block_size}; the kernel takes 128 to "
                             "512, a multiple of 128")
        if key.dim() == 3:  # [blocks, block_size, kv_heads * head_dim]
            k_flat = key.reshape(-1, kv_heads, head_dim)
            v_flat = value.reshape(-1, kv_heads, value.shape[-1] // kv_heads)
        elif key.dim() == 4:  # [blocks, kv_heads, block_size, head_dim]
            k_flat = key.transpose(1, 2).reshape(-1, kv_heads, head_dim)
            v_flat = value.transpose(1, 2).reshape(-1, kv_heads, value.shape[-1])
        else:
            raise ValueError("a paged K/V cache must be 3-D or 4-D")
        if key.shape[1 if key.dim() == 3 else 2] != block_size:
            raise ValueError(f"the cache's block dimension is not block_size={block_size}")
        kv_lens = torch.tensor([int(v) for v in actual_seq_lengths_kv][:batch], dtype=torch.long)
        if len(kv_lens) != batch:
            raise ValueError("actual_seq_lengths_kv needs one length per request")
        span = int(kv_lens.max()) if batch else 0
        if span > block_table.shape[1] * block_size:
            raise ValueError("actual_seq_lengths_kv exceeds what block_table holds")
        positions = torch.arange(span)
        blocks = block_table[:batch].long()[:, (positions // block_size).clamp(
            max=block_table.shape[1] - 1)]
        kv_index = blocks * block_size + positions % block_size
    else:
        kv_ends = _cumulative(actual_seq_lengths_kv, "actual_seq_lengths_kv")
        if len(kv_ends) != batch:
            raise ValueError("actual_seq_lengths_kv needs one entry per request")
        k_flat, v_flat = key, value
        kv_starts = torch.tensor([0, *kv_ends[:-1]], dtype=torch.long)
        kv_lens = torch.tensor(kv_ends, dtype=torch.long) - kv_starts
        span = int(kv_lens.max()) if batch else 0
        kv_index = kv_starts[:, None] + torch.arange(span)[None, :]
    kv_valid = torch.arange(span)[None, :] < kv_lens[:, None]
    kv_index = kv_index.masked_fill(~kv_valid, 0)
    if bool((q_lens > kv_lens).any()):
        raise ValueError("a request has more query than key/value tokens")

    longest = int(q_lens.max()) if batch else 0
    rows = torch.arange(longest)
    q_valid = rows[None, :] < q_lens[:, None]
    q_index = (torch.tensor(q_starts, dtype=torch.long)[:, None] + rows[None, :]
               ).masked_fill(~q_valid, 0)
    visible = kv_valid[:, None, :].expand(batch, longest, span)
    if sparse_mode == 3:
        last = (kv_lens - q_lens)[:, None] + rows[None, :]
        visible = visible & (torch.arange(span)[None, None, :] <= last[:, :, None])
    group = num_heads // kv_heads
    # gathered before the cast: a 16-bit cache cast whole costs a copy of all of it
    q = query[q_index].float()  # [batch, longest, heads, d]
    k = k_flat[kv_index].float()  # [batch, span, kv_heads, d]
    v = v_flat[kv_index].float()
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [batch, heads, longest]
    probs = torch.exp(scores - lse[..., None]).nan_to_num(0.0)
    out_rows = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    out = query.new_zeros(query.shape[0], num_heads, v.shape[-1])
    out[q_index[q_valid]] = out_rows[q_valid].to(query.dtype)
    if softmax_lse_flag:
        lse_out = torch.zeros(query.shape[0], num_heads, 1, dtype=torch.float32)
        lse_out[q_index[q_valid]] = lse.transpose(1, 2)[q_valid][..., None]
    else:
        lse_out = torch.empty(0, dtype=torch.float32)
    return out, lse_out


def npu_fused_infer_attention_score_out(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
    pse_shift: torch.Tensor | None = None, atten_mask: torch.Tensor | None = None,
    actual_seq_lengths: Sequence[int] | None = None,
    actual_seq_lengths_kv: Sequence[int] | None = None,
    dequant_scale1: torch.Tensor | None = None, quant_scale1: torch.Tensor | None = None,
    dequant_scale2: torch.Tensor | None = None, quant_scale2: torch.Tensor | None = None,
    quant_offset2: torch.Tensor | None = None, antiquant_scale: torch.Tensor | None = None,
    antiquant_offset: torch.Tensor | None = None,
    key_antiquant_scale: torch.Tensor | None = None,
    key_antiquant_offset: torch.Tensor | None = None,
    value_antiquant_scale: torch.Tensor | None = None,
    value_antiquant_offset: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    query_padding_size: torch.Tensor | None = None,
    kv_padding_size: torch.Tensor | None = None,
    key_shared_prefix: torch.Tensor | None = None,
    value_shared_prefix: torch.Tensor | None = None,
    actual_shared_prefix_len: Sequence[int] | None = None,
    query_rope: torch.Tensor | None = None, key_rope: torch.Tensor | None = None,
    key_rope_antiquant_scale: torch.Tensor | None = None,
    num_heads: int = 1, scale: float = 1.0, pre_tokens: int = 2147483647,
    next_tokens: int = 2147483647, input_layout: str = "BSH",
    num_key_value_heads: int = 0, sparse_mode: int = 0, inner_precise: int = 0,
    block_size: int = 0, antiquant_mode: int = 0, key_antiquant_mode: int = 0,
    value_antiquant_mode: int = 0, softmax_lse_flag: bool = False,
    workspace: torch.Tensor | None = None, out: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``npu_fused_infer_attention_score`` writing into ``out = [attention, lse]``:
    no separate copy into the caller's buffer. ``attention`` must have the
    output's shape and dtype; ``lse`` is written only with ``softmax_lse_flag``.
    ``workspace`` is the kernel's scratch memory
    (:func:`npu_fused_infer_attention_score_get_max_workspace`, as an ACL graph
    holds it); the emulation needs none.

    The form is the schema torch_npu 2.13.0's library registers
    (``..., Tensor? workspace=None, Tensor[] out) -> (Tensor, Tensor)``) and the
    one its own graph handler calls (``out=[attention, lse]``, with a workspace);
    its yaml and docs name ``attention_out=`` / ``softmax_lse=`` keywords that the
    registered op does not take, and this follows the binary.
    """
    if len(out) != 2:
        raise ValueError(f"out must be [attention, softmax_lse], not {len(out)} tensors")
    attention_out, softmax_lse = out
    result, lse = npu_fused_infer_attention_score(
        query, key, value, pse_shift=pse_shift, atten_mask=atten_mask,
        actual_seq_lengths=actual_seq_lengths, actual_seq_lengths_kv=actual_seq_lengths_kv,
        dequant_scale1=dequant_scale1, quant_scale1=quant_scale1,
        dequant_scale2=dequant_scale2, quant_scale2=quant_scale2, quant_offset2=quant_offset2,
        antiquant_scale=antiquant_scale, antiquant_offset=antiquant_offset,
        block_table=block_table, query_padding_size=query_padding_size,
        kv_padding_size=kv_padding_size, key_antiquant_scale=key_antiquant_scale,
        key_antiquant_offset=key_antiquant_offset, value_antiquant_scale=value_antiquant_scale,
        value_antiquant_offset=value_antiquant_offset, key_shared_prefix=key_shared_prefix,
        value_shared_prefix=value_shared_prefix,
        actual_shared_prefix_len=actual_shared_prefix_len, query_rope=query_rope,
        key_rope=key_rope, key_rope_antiquant_scale=key_rope_antiquant_scale,
        num_heads=num_heads, scale=scale, pre_tokens=pre_tokens, next_tokens=next_tokens,
        input_layout=input_layout, num_key_value_heads=num_key_value_heads,
        sparse_mode=sparse_mode, inner_precise=inner_precise, block_size=block_size,
        antiquant_mode=antiquant_mode, softmax_lse_flag=softmax_lse_flag,
        key_antiquant_mode=key_antiquant_mode, value_antiquant_mode=value_antiquant_mode)
    if attention_out.shape != result.shape or attention_out.dtype != result.dtype:
        raise ValueError(f"out[0] must be {tuple(result.shape)} {result.dtype}, not "
                         f"{tuple(attention_out.shape)} {attention_out.dtype}")
    attention_out.copy_(result)
    if softmax_lse_flag:
        if softmax_lse.shape != lse.shape:
            raise ValueError(f"out[1] (softmax_lse) must be {tuple(lse.shape)}")
        softmax_lse.copy_(lse)
    return attention_out, softmax_lse


def npu_fused_infer_attention_score_get_max_workspace(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
    pse_shift: torch.Tensor | None = None, atten_mask: torch.Tensor | None = None,
    actual_seq_lengths: Sequence[int] | None = None,
    actual_seq_lengths_kv: Sequence[int] | None = None,
    dequant_scale1: torch.Tensor | None = None, quant_scale1: torch.Tensor | None = None,
    dequant_scale2: torch.Tensor | None = None, quant_scale2: torch.Tensor | None = None,
    quant_offset2: torch.Tensor | None = None, antiquant_scale: torch.Tensor | None = None,
    antiquant_offset: torch.Tensor | None = None, block_table: torch.Tensor | None = None,
    query_padding_size: torch.Tensor | None = None,
    kv_padding_size: torch.Tensor | None = None,
    key_antiquant_scale: torch.Tensor | None = None,
    key_antiquant_offset: torch.Tensor | None = None,
    value_antiquant_scale: torch.Tensor | None = None,
    value_antiquant_offset: torch.Tensor | None = None,
    key_shared_prefix: torch.Tensor | None = None,
    value_shared_prefix: torch.Tensor | None = None,
    actual_shared_prefix_len: torch.Tensor | None = None,
    query_rope: torch.Tensor | None = None, key_rope: torch.Tensor | None = None,
    key_rope_antiquant_scale: torch.Tensor | None = None,
    num_heads: int = 1, scale: float = 1.0, pre_tokens: int = 2147483647,
    next_tokens: int = 2147483647, input_layout: str = "BSH",
    num_key_value_heads: int = 0, sparse_mode: int = 0, inner_precise: int = 0,
    block_size: int = 0, antiquant_mode: int = 0, softmax_lse_flag: bool = False,
    key_antiquant_mode: int = 0, value_antiquant_mode: int = 0,
) -> torch.Tensor:
    """The scratch memory the kernel needs at most for these arguments, which an
    ACL graph allocates at capture and hands to every replay of the ``.out``
    form (torch_npu's graph handler does this). The emulated kernel needs
    none: an empty byte tensor on the query's device, for the call to hold."""
    del key, value
    return torch.empty(0, dtype=torch.uint8, device=query.device)
