"""References of torch_npu's mixture-of-experts kernels: gating, routing, grouped
matmul and the token unpermute."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vllm_ascend.emulated.rules import unsupported


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
    unsupported("npu_moe_gating_top_k_softmax_v2", finished=finished)
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
    unsupported("npu_moe_init_routing_v2", scale=scale, offset=offset, x_dtype=x_dtype)
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
    unsupported("npu_grouped_matmul", bias=bias, scale=scale, offset=offset,
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
