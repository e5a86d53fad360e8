"""Reference implementations of the torch_npu ops this plugin calls, in plain PyTorch.

Each function has the name, argument order, defaults, layouts and return
tuple of the torch_npu op (``torch_npu/_op_plugin_docs.py`` and the meta
registrations in the torch-npu 2.13.0 wheel), and computes what its
documentation says. Arguments the plugin does not use raise
``NotImplementedError`` naming them, so a new use is never silently wrong;
inputs the NPU kernel rejects (wrong layout, out-of-range slots, a wrong
compressed mask) raise ``ValueError`` here too.

Numerics: NPU kernels accumulate in float32 and round once to the input
dtype; so do these. Where a kernel takes only float16/bfloat16 (the fused
attention, npu_dynamic_quant's input, npu_quant_matmul's output), float32 is
accepted only under the one named relaxation, :data:`FLOAT32_RELAXATION`, which
the emulated platform's float32 runs need to equal transformers exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

#: The ``sparse_mode`` 2, 3 and 4 masks are this size: the kernel derives each
#: request's causal mask from one shared upper-triangular block.
COMPRESSED_MASK_SIZE = 2048


def _unsupported(op: str, **given: Any) -> None:
    used = [name for name, value in given.items()
            if value is not None and value is not False and value != []]
    if used:
        raise NotImplementedError(f"{op}: the emulation does not implement {', '.join(used)}")


# --- normalisation and activation -------------------------------------------------

def _rstd_shape(x: torch.Tensor, gamma: torch.Tensor) -> list[int]:
    keep = x.dim() - gamma.dim()
    return [x.shape[i] if i < keep else 1 for i in range(x.dim())]


def _rms(x: torch.Tensor, gamma: torch.Tensor, epsilon: float
         ) -> tuple[torch.Tensor, torch.Tensor]:
    if tuple(x.shape[x.dim() - gamma.dim():]) != tuple(gamma.shape):
        raise ValueError(f"gamma {tuple(gamma.shape)} must match the last dims of x "
                         f"{tuple(x.shape)}")
    dims = tuple(range(x.dim() - gamma.dim(), x.dim()))
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + epsilon)
    return xf * rstd * gamma.float(), rstd.reshape(_rstd_shape(x, gamma))


def npu_rms_norm(input: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd): y = x / sqrt(mean(x², over gamma's dims) + ε) · γ; rstd in float32."""
    y, rstd = _rms(input, gamma, epsilon)
    return y.to(input.dtype), rstd


def npu_add_rms_norm(x1: torch.Tensor, x2: torch.Tensor, gamma: torch.Tensor,
                     epsilon: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, rstd, x): RMSNorm of x = x1 + x2; the third output, x in the input
    dtype, is what a decoder layer carries on as its residual."""
    if x1.shape != x2.shape or x1.dtype != x2.dtype:
        raise ValueError("npu_add_rms_norm: x1 and x2 must have one shape and dtype")
    summed = x1.float() + x2.float()
    y, rstd = _rms(summed, gamma, epsilon)
    return y.to(x1.dtype), rstd, summed.to(x1.dtype)


def npu_swiglu(input: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """swish(A) · B, where A and B are the two halves of the input along ``dim``."""
    if input.shape[dim] % 2:
        raise ValueError(f"npu_swiglu: dim {dim} of size {input.shape[dim]} is odd")
    a, b = input.float().chunk(2, dim=dim)
    return (F.silu(a) * b).to(input.dtype)


# --- rotary position embedding ------------------------------------------------------

def _rotate(x: torch.Tensor, rotary_mode: str) -> torch.Tensor:
    if rotary_mode == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    if rotary_mode == "interleave":
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)
    raise ValueError(f"rotary_mode must be 'half' or 'interleave', not {rotary_mode!r}")


def npu_rotary_mul(input: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor,
                   rotary_mode: str = "half", rotate: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """r1 · x + r2 · rotate(x) on 4-D inputs (cos = r1, sin = r2, broadcast)."""
    if input.dim() != 4 or r1.dim() != 4 or r2.dim() != 4:
        raise ValueError("npu_rotary_mul takes 4-D input, r1 and r2")
    xf = input.float()
    turned = xf @ rotate.float() if rotate is not None else _rotate(xf, rotary_mode)
    return (r1.float() * xf + r2.float() * turned).to(input.dtype)


def npu_mrope(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
              cos_sin_cache: torch.Tensor, head_size: int, *,
              mrope_section: Sequence[int] | None = None, rotary_mode: str = "half",
              cache_mode: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
    """(query, key) rotated by the positions' rows of ``cos_sin_cache``.

    ``cos_sin_cache`` is (max positions, rotary_dim): cos in the first half of
    a row, sin in the second. 1-D positions are plain RoPE; (3, tokens)
    positions with ``mrope_section`` take the cos/sin of each section from its
    own row (multimodal RoPE). Query and key are 2-D (tokens, heads ·
    head_size); dims past rotary_dim pass through.
    """
    if cache_mode != "default":
        raise NotImplementedError(f"npu_mrope: cache_mode={cache_mode!r} is not emulated")
    if query.dim() != 2 or key.dim() != 2 or cos_sin_cache.dim() != 2:
        raise ValueError("npu_mrope takes 2-D query, key and cos_sin_cache")
    rotary_dim = cos_sin_cache.shape[-1]
    if positions.numel() and int(positions.max()) >= cos_sin_cache.shape[0]:
        raise ValueError(f"npu_mrope: position {int(positions.max())} is outside the cache "
                         f"of {cos_sin_cache.shape[0]} positions")
    cos_sin = cos_sin_cache.float()[positions.long()]
    cos, sin = cos_sin.chunk(2, dim=-1)
    if positions.dim() == 2:
        sections = list(mrope_section or [])
        if positions.shape[0] != 3 or sum(sections) != rotary_dim // 2:
            raise ValueError("npu_mrope: (3, tokens) positions need mrope_section summing "
                             "to rotary_dim / 2")
        cos = torch.cat([part[i] for i, part in enumerate(cos.split(sections, dim=-1))], -1)
        sin = torch.cat([part[i] for i, part in enumerate(sin.split(sections, dim=-1))], -1)
    elif positions.dim() != 1:
        raise ValueError("npu_mrope: positions must be (tokens,) or (3, tokens)")
    if rotary_mode == "half":
        cos, sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    else:
        cos, sin = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)

    def rotated(x: torch.Tensor) -> torch.Tensor:
        heads = x.view(x.shape[0], -1, head_size).float()
        rot, rest = heads[..., :rotary_dim], heads[..., rotary_dim:]
        rot = rot * cos[:, None] + _rotate(rot, rotary_mode) * sin[:, None]
        return torch.cat((rot, rest), dim=-1).reshape(x.shape).to(x.dtype)

    return rotated(query), rotated(key)


# --- the float32 relaxation ---------------------------------------------------------

#: The one way the references take more than the kernels: float32 where a kernel
#: takes only float16/bfloat16, so that the emulated platform's float32 runs hold
#: the plugin to transformers' float32 tokens exactly. On under emulation (every
#: call it lets through is counted in :data:`relaxed`); off inside
#: :func:`kernel_rules`, which the device check's calls are held to.
FLOAT32_RELAXATION = "float32 relaxation"
_float32_relaxed = True
#: calls accepted only through the float32 relaxation, by op
relaxed: Counter[str] = Counter()


@contextmanager
def kernel_rules() -> Iterator[None]:
    """Inside the block the references take only what the kernels take (no float32
    relaxation): what a call must satisfy to run on an NPU."""
    global _float32_relaxed
    before, _float32_relaxed = _float32_relaxed, False
    try:
        yield
    finally:
        _float32_relaxed = before


def _float32_relaxation(op: str, what: str) -> None:
    """A float32 ``what`` the kernel does not take: accepted (and counted) only
    under the relaxation."""
    if not _float32_relaxed:
        raise ValueError(f"{op}: the kernel takes no float32 {what} (taken only under the "
                         f"emulation's {FLOAT32_RELAXATION}, off here)")
    relaxed[op] += 1


# --- paged KV cache and attention ---------------------------------------------------

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
    _unsupported("npu_scatter_pa_kv_cache", compress_lens=compress_lens,
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
    _unsupported(
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
        _float32_relaxation("npu_fused_infer_attention_score", "query, key and value")
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


# --- mixture of experts ---------------------------------------------------------------

def npu_moe_gating_top_k_softmax_v2(x: torch.Tensor, *, k: int = 1,
                                    finished: torch.Tensor | None = None,
                                    renorm: int | None = 0,
                                    output_softmax: bool | None = False
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, expert_idx, softmax): the k largest router probabilities of each row.

    ``renorm=0``: softmax over all experts, then top k (the weights of a row
    sum to less than 1). ``renorm=1``: top k of the logits, then softmax over
    those k (the weights sum to 1: the renormalised routing most MoE models
    use). y has x's dtype, expert_idx is int32; both sorted by weight,
    descending (ties: the lower expert first). The third output is the full
    softmax in float32 when ``output_softmax`` and ``renorm=0``, else empty.
    """
    _unsupported("npu_moe_gating_top_k_softmax_v2", finished=finished)
    if x.dim() not in (2, 3):
        raise ValueError("npu_moe_gating_top_k_softmax_v2 takes a 2-D or 3-D x")
    experts = x.shape[-1]
    if not 0 < k <= min(experts, 1024):
        raise ValueError(f"npu_moe_gating_top_k_softmax_v2: k={k} must be in (0, "
                         f"{min(experts, 1024)}]")
    if renorm not in (0, 1):
        raise ValueError(f"npu_moe_gating_top_k_softmax_v2: renorm must be 0 or 1, not {renorm}")
    logits = x.float()
    # a stable descending sort keeps the lower expert first among equal values
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k]
    if renorm == 0:
        probs = torch.softmax(logits, dim=-1)
        y = probs.gather(-1, order)
    else:
        probs = None
        y = torch.softmax(logits.gather(-1, order), dim=-1)
    softmax = probs if output_softmax and probs is not None else \
        torch.empty(0, dtype=torch.float32)
    return y.to(x.dtype), order.to(torch.int32), softmax


def npu_moe_init_routing_v2(
    x: torch.Tensor, expert_idx: torch.Tensor, *, scale: torch.Tensor | None = None,
    offset: torch.Tensor | None = None, active_num: int = -1, expert_capacity: int = -1,
    expert_num: int = -1, drop_pad_mode: int = 0, expert_tokens_num_type: int = 0,
    expert_tokens_num_flag: bool = False, quant_mode: int = -1,
    active_expert_range: Sequence[int] = [],  # torch_npu's default, never mutated
    row_idx_type: int = 0,
    x_dtype: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(expanded_x, expanded_row_idx, expert_tokens, expanded_scale): each token
    copied once per chosen expert, the copies grouped by expert.

    The (token, j) choices, flattened token-major (source row t·K + j), are
    sorted by expert id, stably; choices of experts outside
    ``active_expert_range`` ([start, end), default all ``expert_num``) are
    dropped, so the first ``available`` rows of expanded_x are the kept
    choices, ``expanded_x[i] = x[source_i // K]``, and the rest are zero.
    ``row_idx_type=1`` (scatter index): ``expanded_row_idx[i] = source_i`` for
    the kept rows, -1 after them. ``row_idx_type=0`` (gather index):
    ``expanded_row_idx[source] = i``, -1 for a dropped choice.
    ``expert_tokens`` (int64, one per expert of the range): tokens per expert
    (``expert_tokens_num_type=1``); the cumsum form (0) is documented but, the
    docs say, not supported yet, so it is refused. Unquantised only
    (``quant_mode=-1``), dropless only (``drop_pad_mode=0``).
    """
    _unsupported("npu_moe_init_routing_v2", scale=scale, offset=offset, x_dtype=x_dtype)
    if quant_mode != -1:
        raise NotImplementedError("npu_moe_init_routing_v2: the emulation implements "
                                  "quant_mode=-1 (no quantization) only")
    if drop_pad_mode != 0:
        raise NotImplementedError("npu_moe_init_routing_v2: drop_pad_mode=1 is not emulated")
    if expert_tokens_num_flag and expert_tokens_num_type == 0:
        # the docs: "取值为0、1和2 ... 当前仅支持1和2"
        raise ValueError("npu_moe_init_routing_v2: expert_tokens_num_type=0 (cumsum) is not "
                         "supported by the kernel; use 1 (counts)")
    if expert_tokens_num_type not in (0, 1):
        raise NotImplementedError("npu_moe_init_routing_v2: expert_tokens_num_type=2 "
                                  "(key_value) is not emulated")
    if x.dim() != 2 or expert_idx.dim() != 2 or x.shape[0] != expert_idx.shape[0]:
        raise ValueError("npu_moe_init_routing_v2: x must be (rows, H) and expert_idx "
                         "(rows, K)")
    if expert_idx.dtype != torch.int32:
        raise ValueError(f"npu_moe_init_routing_v2: expert_idx must be int32, not "
                         f"{expert_idx.dtype}")
    if row_idx_type not in (0, 1):
        raise ValueError("npu_moe_init_routing_v2: row_idx_type must be 0 or 1")
    if expert_num <= 0:
        raise ValueError("npu_moe_init_routing_v2: expert_num must be positive")
    start, end = (list(active_expert_range) or [0, expert_num])
    if not 0 <= start < end <= expert_num:
        raise ValueError(f"npu_moe_init_routing_v2: active_expert_range [{start}, {end}) "
                         f"must lie in [0, {expert_num})")
    rows, k = expert_idx.shape
    flat = expert_idx.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= expert_num):
        raise ValueError(f"npu_moe_init_routing_v2: expert ids must lie in [0, {expert_num})")
    total = rows * k
    out_rows = total if active_num <= 0 else min(active_num, total)
    order = torch.sort(flat, stable=True).indices  # source rows, by expert
    kept = order[(flat[order] >= start) & (flat[order] < end)][:out_rows]
    available = kept.numel()
    expanded_x = x.new_zeros(out_rows, x.shape[1])
    expanded_x[:available] = x[kept // k]
    expanded_row_idx = torch.full((total,), -1, dtype=torch.int32)
    if row_idx_type == 1:
        expanded_row_idx[:available] = kept.to(torch.int32)
    else:
        expanded_row_idx[kept] = torch.arange(available, dtype=torch.int32)
    counts = torch.bincount(flat[kept] - start, minlength=end - start).to(torch.int64)
    expert_tokens = counts if expert_tokens_num_flag else torch.empty(0, dtype=torch.int64)
    # without scale the kernel leaves expanded_scale undefined
    expanded_scale = torch.zeros(out_rows, dtype=torch.float32)
    return expanded_x, expanded_row_idx, expert_tokens, expanded_scale


def npu_grouped_matmul(
    x: Sequence[torch.Tensor], weight: Sequence[torch.Tensor], *,
    bias: Sequence[torch.Tensor] | None = None, scale: Sequence[torch.Tensor] | None = None,
    offset: Sequence[torch.Tensor] | None = None,
    antiquant_scale: Sequence[torch.Tensor] | None = None,
    antiquant_offset: Sequence[torch.Tensor] | None = None,
    per_token_scale: Sequence[torch.Tensor] | None = None,
    group_list: torch.Tensor | None = None,
    activation_input: Sequence[torch.Tensor] | None = None,
    activation_quant_scale: Sequence[torch.Tensor] | None = None,
    activation_quant_offset: Sequence[torch.Tensor] | None = None,
    split_item: int | None = 0, group_type: int | None = None,
    group_list_type: int | None = 0, act_type: int | None = 0,
    tuning_config: Sequence[int] | None = None, output_dtype: Any = None,
    x_dtype: Any = None, weight_dtype: Any = None, scale_dtype: Any = None,
    per_token_scale_dtype: Any = None,
) -> list[torch.Tensor]:
    """[y]: one matmul per group of x's rows, ``y[rows of g] = x[rows of g] @ weight[g]``.

    Emulated: the form an MoE layer uses, a single x (m, k), a single weight
    (groups, k, n) (a transposed view is fine: the kernel reads either
    order), ``group_type=0`` (groups along m) with ``group_list`` an int64
    tensor of group sizes (``group_list_type=1``) or of their running sum (0),
    and one output (``split_item`` 2 or 3); group sizes need two groups or
    more (the docs: "group_list_type为1时, group_list必须为非负数列, 且长度不能为1").
    Rows past the last group are zero. Products accumulate in float32 and
    round once to x's dtype.
    """
    _unsupported("npu_grouped_matmul", bias=bias, scale=scale, offset=offset,
                 antiquant_scale=antiquant_scale, antiquant_offset=antiquant_offset,
                 per_token_scale=per_token_scale, activation_input=activation_input,
                 activation_quant_scale=activation_quant_scale,
                 activation_quant_offset=activation_quant_offset, tuning_config=tuning_config,
                 output_dtype=output_dtype, x_dtype=x_dtype, weight_dtype=weight_dtype,
                 scale_dtype=scale_dtype, per_token_scale_dtype=per_token_scale_dtype)
    if act_type:
        raise NotImplementedError("npu_grouped_matmul: fused activations are not emulated")
    if group_type != 0 or split_item not in (2, 3):
        raise NotImplementedError("npu_grouped_matmul: the emulation implements group_type=0 "
                                  "with split_item 2 or 3 (one x, one weight, one y)")
    if len(x) != 1 or len(weight) != 1:
        raise NotImplementedError("npu_grouped_matmul: the emulation takes one x and one "
                                  "(groups, k, n) weight")
    (a,), (w,) = x, weight
    if a.dim() != 2 or w.dim() != 3:
        raise ValueError("npu_grouped_matmul: with group_type=0 and one weight, x must be "
                         "2-D and weight 3-D (groups, k, n)")
    if a.shape[1] != w.shape[1]:
        raise ValueError(f"npu_grouped_matmul: x {tuple(a.shape)} and weight "
                         f"{tuple(w.shape)} do not multiply")
    if a.dtype != w.dtype:
        raise ValueError("npu_grouped_matmul: x and weight must share a dtype unquantised")
    if group_list is None or not isinstance(group_list, torch.Tensor) or \
            group_list.dtype != torch.int64 or group_list.dim() != 1:
        raise ValueError("npu_grouped_matmul: group_type=0 needs group_list, a 1-D int64 "
                         "tensor")
    if group_list.numel() != w.shape[0] or w.shape[0] > 1024:
        raise ValueError(f"npu_grouped_matmul: group_list has {group_list.numel()} groups, "
                         f"weight {w.shape[0]} (at most 1024)")
    if group_list_type == 1:
        if group_list.numel() == 1:
            # the docs' constraint for group sizes; a running sum may be one long
            raise ValueError("npu_grouped_matmul: a group_list of group sizes "
                             "(group_list_type=1) cannot have length 1; pass the running "
                             "sum (group_list_type=0)")
        if bool((group_list < 0).any()):
            raise ValueError("npu_grouped_matmul: group sizes must be non-negative")
        ends = group_list.cumsum(0)
    elif group_list_type == 0:
        ends = group_list
        if bool((ends[1:] < ends[:-1]).any()) or bool((ends < 0).any()):
            raise ValueError("npu_grouped_matmul: a cumulative group_list must be "
                             "non-negative and non-decreasing")
    else:
        raise ValueError("npu_grouped_matmul: group_list_type must be 0 or 1")
    total = int(ends[-1]) if ends.numel() else 0
    if total > a.shape[0]:
        raise ValueError(f"npu_grouped_matmul: the groups hold {total} rows, x has "
                         f"{a.shape[0]}")
    y = a.new_zeros(a.shape[0], w.shape[2])
    start = 0
    for group, end in enumerate(ends.tolist()):
        if end > start:
            y[start:end] = (a[start:end].float() @ w[group].float()).to(a.dtype)
        start = end
    return [y]


def npu_moe_token_unpermute(permuted_tokens: torch.Tensor, sorted_indices: torch.Tensor,
                            probs: torch.Tensor | None = None, padded_mode: bool = False,
                            restore_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Each token's K expert outputs gathered back and summed, weighted by ``probs``:
    ``out[t] = sum_j probs[t, j] * permuted_tokens[sorted_indices[t*K + j]]``.

    ``sorted_indices`` is indexed by source row (token t's j-th choice is
    source t*K + j) and holds that choice's row in ``permuted_tokens``: a
    gather index. torch_npu 2.13.0's docs carry two entries for this op that
    disagree: the earlier one (bfloat16 only) has an example that reads the
    index the other way round, as the row each permuted row came from; the
    later one (float16/bfloat16/float32, int32 indices) defines it as the
    position in ``permuted_tokens`` and its example gives [1, 2, 3, 4] only
    under that reading. The later reading is followed: it is the one
    ``npu_moe_token_permute``'s docs give (``permuted[sorted_indices[i]] =
    tokens[i // K]``), Huawei's own op test round-trips permute through
    unpermute with it, and upstream vllm-ascend feeds the op
    ``npu_moe_init_routing_v2``'s gather index (``row_idx_type=0``).
    K is probs' second dim (1 without probs), at most 512. Out: (tokens,
    hidden) in permuted_tokens' dtype, summed in float32.
    """
    if padded_mode or restore_shape is not None:
        raise NotImplementedError("npu_moe_token_unpermute: padded_mode is not supported by "
                                  "the kernel either")
    if permuted_tokens.dim() != 2 or sorted_indices.dim() != 1:
        raise ValueError("npu_moe_token_unpermute: permuted_tokens must be 2-D and "
                         "sorted_indices 1-D")
    floats = (torch.float16, torch.bfloat16, torch.float32)
    if permuted_tokens.dtype not in floats or (probs is not None and probs.dtype not in floats):
        raise ValueError("npu_moe_token_unpermute: permuted_tokens and probs must be float16, "
                         "bfloat16 or float32")
    if sorted_indices.dtype != torch.int32:
        raise ValueError(f"npu_moe_token_unpermute: sorted_indices must be int32, not "
                         f"{sorted_indices.dtype}")
    if sorted_indices.numel() != permuted_tokens.shape[0]:
        raise ValueError("npu_moe_token_unpermute: one index per permuted row")
    if probs is not None and probs.dim() != 2:
        raise ValueError("npu_moe_token_unpermute: probs must be (tokens, K)")
    k = 1 if probs is None else probs.shape[1]
    if k > 512:
        raise ValueError(f"npu_moe_token_unpermute: K={k} choices per token; at most 512")
    total = sorted_indices.numel()
    if total % k or (probs is not None and probs.shape[0] * k != total):
        raise ValueError(f"npu_moe_token_unpermute: {total} rows do not make tokens of "
                         f"K={k} choices")
    index = sorted_indices.long()
    if total and (int(index.min()) < 0 or int(index.max()) >= total or
                  index.unique().numel() != total):
        raise ValueError("npu_moe_token_unpermute: sorted_indices must be a permutation of "
                         f"0..{total - 1}")
    by_source = permuted_tokens.float().index_select(0, index).view(total // k, k, -1)
    if probs is not None:
        by_source = by_source * probs.float().unsqueeze(-1)
    return by_source.sum(dim=1).to(permuted_tokens.dtype)


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


# --- quantization -----------------------------------------------------------------

#: c10::ScalarType numbers of torch's dtypes: torch_npu registers its dtype
#: arguments as ``int`` (``npu_quantize(..., int dtype, ...)``,
#: ``npu_quant_matmul(..., int? output_dtype=None, ...)``), and the dispatcher
#: hands the kernel a torch dtype's ScalarType number
SCALAR_TYPES = {0: torch.uint8, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.int64,
                5: torch.float16, 6: torch.float32, 7: torch.float64, 11: torch.bool,
                12: torch.qint8, 13: torch.quint8, 14: torch.qint32, 15: torch.bfloat16}


def as_dtype(value: Any) -> Any:
    """A dtype argument as the kernel reads it: a torch dtype, or the ScalarType
    number the dispatcher passes for one; anything else is returned as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return SCALAR_TYPES.get(value, value)
    return value


#: output dtypes of the integer quantization ops, by the names torch_npu takes
_INT_DTYPES = {torch.qint8: torch.int8, torch.int8: torch.int8,
               torch.quint8: torch.uint8, torch.uint8: torch.uint8,
               torch.qint32: torch.int32, torch.int32: torch.int32}


def _saturate(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round to the nearest integer (ties to even: torch_npu's documents do not
    name the tie rule) and clamp to the range of ``dtype``."""
    info = torch.iinfo(dtype)
    return torch.round(x).clamp(info.min, info.max).to(dtype)


def _along(t: torch.Tensor, x: torch.Tensor, dim: int, name: str) -> torch.Tensor:
    """``t`` (one value, a 1-D tensor of x's size at ``dim``, or x's rank with
    every other dim 1) shaped to broadcast against x."""
    if t.dim() == 1 and t.numel() in (1, x.shape[dim]):
        shape = [1] * x.dim()
        shape[dim] = t.numel()
        return t.float().reshape(shape)
    if t.dim() == x.dim() and all(t.shape[i] == 1 for i in range(x.dim()) if i != dim) \
            and t.shape[dim] in (1, x.shape[dim]):
        return t.float()
    raise ValueError(f"{name} of shape {tuple(t.shape)} does not run along dim {dim} "
                     f"of input {tuple(x.shape)}")


def npu_quantize(input: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None,
                 dtype: torch.dtype | int, axis: int = 1, div_mode: bool = True) -> torch.Tensor:
    """x / scales + zero_points (``div_mode``) or x · scales + zero_points, in
    float32, rounded and saturated to ``dtype``. scales and zero_points run
    along ``axis``; without ``div_mode`` an axis of -2 is the second-last dim
    and any larger one the last."""
    out_dtype = _INT_DTYPES.get(as_dtype(dtype))
    if out_dtype is None:
        raise NotImplementedError(f"npu_quantize: the emulation does not implement dtype {dtype}")
    if div_mode:
        if not -input.dim() <= axis < input.dim():
            raise ValueError(f"npu_quantize: axis {axis} outside input of {input.dim()} dims")
        dim = axis % input.dim()
    else:
        if axis < -2:
            raise ValueError(f"npu_quantize: axis must be >= -2 without div_mode, got {axis}")
        dim = input.dim() - 2 if axis == -2 else input.dim() - 1
    y = input.float()
    s = _along(scales, input, dim, "scales")
    y = y / s if div_mode else y * s
    if zero_points is not None:
        y = y + _along(zero_points, input, dim, "zero_points")
    return _saturate(y, out_dtype)


def npu_dynamic_quant(input: torch.Tensor, *, smooth_scales: torch.Tensor | None = None,
                      group_index: torch.Tensor | None = None, dst_type: Any = None,
                      quant_mode: str = "pertoken", dst_type_max: float = 0.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, scale): symmetric per-token int8, scale = rowmax(|x · smooth|) / 127
    in float32 (x's shape without its last dim), y = round(x · smooth / scale).
    A row of zeros has scale 0 and y 0."""
    _unsupported("npu_dynamic_quant", group_index=group_index)
    if dst_type not in (None, torch.int8, torch.qint8):
        raise NotImplementedError(f"npu_dynamic_quant: the emulation does not implement "
                                  f"dst_type {dst_type}")
    if quant_mode != "pertoken" or dst_type_max != 0.0:
        raise NotImplementedError("npu_dynamic_quant: the emulation implements quant_mode "
                                  "'pertoken' with the int8 range only")
    if input.dim() < 2:
        raise ValueError("npu_dynamic_quant: input needs at least 2 dims")
    if input.dtype == torch.float32:
        _float32_relaxation("npu_dynamic_quant", "input")
    elif input.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"npu_dynamic_quant: input must be float16 or bfloat16, not "
                         f"{input.dtype}")
    x = input.float()
    if smooth_scales is not None:
        if tuple(smooth_scales.shape) != (x.shape[-1],):
            raise ValueError(f"npu_dynamic_quant: smooth_scales {tuple(smooth_scales.shape)} "
                             f"must be ({x.shape[-1]},)")
        x = x * smooth_scales.float()
    scale = x.abs().amax(dim=-1) / 127.0
    safe = torch.where(scale > 0, scale, 1.0)[..., None]
    return _saturate(x / safe, torch.int8), scale


def npu_quant_matmul(x1: torch.Tensor, x2: torch.Tensor, scale: torch.Tensor, *,
                     offset: torch.Tensor | None = None,
                     pertoken_scale: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, output_dtype: Any = None,
                     x1_dtype: Any = None, x2_dtype: Any = None,
                     pertoken_scale_dtype: Any = None, scale_dtype: Any = None,
                     group_sizes: Sequence[int] | None = None,
                     y_scale: torch.Tensor | None = None) -> torch.Tensor:
    """int8 x1 @ int8 x2 accumulated exactly (int32 on the NPU), plus an int32
    bias, times the per-channel ``scale`` and the per-token ``pertoken_scale``,
    plus a floating bias; int8 output (the default) adds ``offset`` and is
    rounded and saturated. The dtypes of scale, offset, bias, pertoken_scale and
    output must be one of the kernel's combinations (:func:`_quant_matmul_takes`);
    float32 output only under the :data:`FLOAT32_RELAXATION`, on bfloat16's terms."""
    _unsupported("npu_quant_matmul", x1_dtype=x1_dtype, x2_dtype=x2_dtype,
                 pertoken_scale_dtype=pertoken_scale_dtype, scale_dtype=scale_dtype,
                 group_sizes=group_sizes, y_scale=y_scale)
    if x1.dtype != torch.int8 or x2.dtype != torch.int8:
        raise NotImplementedError("npu_quant_matmul: the emulation implements int8 x1 and x2 "
                                  f"only, got {x1.dtype} and {x2.dtype}")
    if not (2 <= x1.dim() <= 6 and 2 <= x2.dim() <= 6):
        raise ValueError("npu_quant_matmul: x1 and x2 need 2 to 6 dims")
    k, n = x2.shape[-2:]
    if x1.shape[-1] != k:
        raise ValueError(f"npu_quant_matmul: x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)} "
                         "do not multiply")
    if scale.dtype == torch.int64:
        raise NotImplementedError("npu_quant_matmul: the emulation takes scale in float32 or "
                                  "bfloat16, not npu_trans_quant_param's int64")
    if scale.dim() != 1 or scale.numel() not in (1, n):
        raise ValueError(f"npu_quant_matmul: scale must be (1,) or ({n},), "
                         f"got {tuple(scale.shape)}")
    out_dtype = torch.int8 if output_dtype is None else as_dtype(output_dtype)
    if out_dtype not in (torch.int8, torch.float16, torch.bfloat16, torch.float32):
        raise NotImplementedError(f"npu_quant_matmul: the emulation does not implement "
                                  f"output_dtype {out_dtype}")
    if offset is not None and out_dtype != torch.int8:
        raise ValueError("npu_quant_matmul: offset applies to int8 output only")
    if out_dtype == torch.float32:
        _float32_relaxation("npu_quant_matmul", "output_dtype")
    if not _quant_matmul_takes(out_dtype, scale, offset, pertoken_scale, bias):
        def name(t: torch.Tensor | None) -> str:
            return "None" if t is None else str(t.dtype).removeprefix("torch.")
        raise ValueError(
            f"npu_quant_matmul: the kernel takes no output_dtype {out_dtype} with scale "
            f"{name(scale)}, offset {name(offset)}, pertoken_scale {name(pertoken_scale)} and "
            f"bias {name(bias)} (torch_npu's table of the Atlas A2/A3 combinations)")
    if x2.dim() == 2:
        # int8 products summed exactly in int32, as the NPU's cube unit does
        rows = torch._int_mm(x1.reshape(-1, k), x2).reshape(*x1.shape[:-1], n)
        acc = rows.double()
    else:  # float64 holds every int8 product sum of k < 2**38 terms exactly
        acc = torch.matmul(x1.double(), x2.double())
    if bias is not None and bias.dtype == torch.int32:
        acc = acc + bias.double()
    y = acc * scale.double()
    if pertoken_scale is not None:
        if tuple(pertoken_scale.shape) != tuple(x1.shape[:-1]):
            raise ValueError(f"npu_quant_matmul: pertoken_scale {tuple(pertoken_scale.shape)} "
                             f"must be ({', '.join(map(str, x1.shape[:-1]))},)")
        y = y * pertoken_scale.double()[..., None]
    if bias is not None and bias.dtype != torch.int32:
        y = y + bias.double()
    if out_dtype == torch.int8:
        if offset is not None:
            y = y + offset.double()
        return _saturate(y, torch.int8)
    return y.to(out_dtype)


def _quant_matmul_takes(out: torch.dtype, scale: torch.Tensor, offset: torch.Tensor | None,
                        pertoken_scale: torch.Tensor | None, bias: torch.Tensor | None) -> bool:
    """Whether int8 x1 and x2 with these dtypes are a combination of torch_npu
    2.13.0's table for Atlas A2/A3 (its docs of npu_quant_matmul): int8 and
    float16 out with scale int64/float32 and bias int32 or None, no
    pertoken_scale (int8 out may add a float32 offset); float16 out with a
    float32 pertoken_scale, scale float32, bias int32/float16/float32 or None;
    bfloat16 out with scale float32/bfloat16, bias int32/bfloat16/float32 or
    None, pertoken_scale float32 or None. float32 out (the relaxation) is held
    to bfloat16's terms."""
    bias_dtype = None if bias is None else bias.dtype
    if pertoken_scale is not None and pertoken_scale.dtype != torch.float32:
        return False
    if offset is not None and offset.dtype != torch.float32:
        return False
    per_channel = (scale.dtype in (torch.int64, torch.float32)
                   and bias_dtype in (None, torch.int32) and pertoken_scale is None)
    if out == torch.int8:
        return per_channel
    if out == torch.float16:
        return per_channel or (
            scale.dtype == torch.float32 and pertoken_scale is not None
            and bias_dtype in (None, torch.int32, torch.float16, torch.float32))
    if out in (torch.bfloat16, torch.float32):
        return scale.dtype in (torch.float32, torch.bfloat16) and \
            bias_dtype in (None, torch.int32, torch.bfloat16, torch.float32)
    return False


#: Every op the plugin may call, by its torch_npu name.
REFERENCES: dict[str, Callable[..., Any]] = {
    "npu_rms_norm": npu_rms_norm,
    "npu_add_rms_norm": npu_add_rms_norm,
    "npu_swiglu": npu_swiglu,
    "npu_rotary_mul": npu_rotary_mul,
    "npu_mrope": npu_mrope,
    "npu_scatter_pa_kv_cache": npu_scatter_pa_kv_cache,
    "npu_fused_infer_attention_score": npu_fused_infer_attention_score,
    "npu_fused_infer_attention_score.out": npu_fused_infer_attention_score_out,
    "_npu_fused_infer_attention_score_get_max_workspace":
        npu_fused_infer_attention_score_get_max_workspace,
    "npu_moe_gating_top_k_softmax_v2": npu_moe_gating_top_k_softmax_v2,
    "npu_moe_init_routing_v2": npu_moe_init_routing_v2,
    "npu_grouped_matmul": npu_grouped_matmul,
    "npu_moe_token_unpermute": npu_moe_token_unpermute,
    "npu_quantize": npu_quantize,
    "npu_dynamic_quant": npu_dynamic_quant,
    "npu_quant_matmul": npu_quant_matmul,
}
