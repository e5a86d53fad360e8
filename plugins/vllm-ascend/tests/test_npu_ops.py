"""Each NPU op's reference against plain math and against torch_npu's meta shapes.

Plain math here means the formula written out directly (a loop over requests,
explicit softmax), not the reference's vectorised code. The meta functions
are torch_npu's own, read from its wheel (see npu_meta.py).
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from pathlib import Path

import pytest
import torch
from npu_meta import meta_of
from npu_schemas import registered_schemas, through_schemas

from vllm_ascend import emulation, npu_ops

SRC = Path(emulation.__file__).parent
torch.manual_seed(0)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def same_meta(outputs, metas) -> None:
    """Shapes and dtypes of the reference's outputs equal the meta function's."""
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    metas = metas if isinstance(metas, tuple) else (metas,)
    assert len(outputs) == len(metas)
    for out, meta in zip(outputs, metas):
        assert (tuple(out.shape), out.dtype) == (tuple(meta.shape), meta.dtype)


# --- one check per op: its name is the key the completeness test reads -------------

def check_npu_rms_norm() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        x, w = torch.randn(5, 3, 64, dtype=dtype), torch.randn(64, dtype=dtype)
        y, rstd = npu_ops.npu_rms_norm(x, w, 1e-5)
        xf = x.double()
        expected = xf / torch.sqrt((xf * xf).mean(-1, keepdim=True) + 1e-5) * w.double()
        close(y.double(), expected.to(dtype).double(), 1e-5 if dtype == torch.float32 else 2e-2)
        close(rstd.double(), 1 / torch.sqrt((xf * xf).mean(-1, keepdim=True) + 1e-5), 1e-5)
        same_meta((y, rstd), meta_of("npu_rms_norm", x, w, 1e-5))


def check_npu_add_rms_norm() -> None:
    x1, x2, w = torch.randn(7, 32), torch.randn(7, 32), torch.randn(32)
    y, rstd, summed = npu_ops.npu_add_rms_norm(x1, x2, w, 1e-6)
    s = x1 + x2
    close(summed, s)
    close(y, s / torch.sqrt((s * s).mean(-1, keepdim=True) + 1e-6) * w)
    same_meta((y, rstd, summed), meta_of("npu_add_rms_norm", x1, x2, w, 1e-6))


def check_npu_swiglu() -> None:
    x = torch.randn(4, 6, 10)
    out = npu_ops.npu_swiglu(x, dim=-1)
    a, b = x[..., :5], x[..., 5:]
    close(out, a / (1 + torch.exp(-a)) * b)
    same_meta(out, meta_of("npu_swiglu", x, dim=-1))
    with pytest.raises(ValueError, match="odd"):
        npu_ops.npu_swiglu(torch.randn(3, 5))


def _rope_by_pairs(x: torch.Tensor, angle: torch.Tensor, neox: bool) -> torch.Tensor:
    """Rotate each (first, second) pair of x by its angle, element by element."""
    out = x.clone()
    half = x.shape[-1] // 2
    for i in range(half):
        a, b = (i, i + half) if neox else (2 * i, 2 * i + 1)
        c, s = torch.cos(angle[..., i]), torch.sin(angle[..., i])
        out[..., a] = x[..., a] * c - x[..., b] * s
        out[..., b] = x[..., b] * c + x[..., a] * s
    return out


def check_npu_rotary_mul() -> None:
    b, s, n, d = 2, 5, 3, 8
    x = torch.randn(b, s, n, d)
    angle = torch.randn(1, s, 1, d // 2)
    for mode, neox in (("half", True), ("interleave", False)):
        full = torch.cat((angle, angle), -1) if neox else angle.repeat_interleave(2, -1)
        out = npu_ops.npu_rotary_mul(x, torch.cos(full), torch.sin(full), rotary_mode=mode)
        close(out, _rope_by_pairs(x, angle.expand(b, s, n, d // 2), neox))
        same_meta(out, meta_of("npu_rotary_mul", x, torch.cos(full), torch.sin(full), mode))


def check_npu_mrope() -> None:
    tokens, head, rotary, max_pos = 6, 16, 8, 32
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary, 2).float() / rotary))
    angles = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]
    cache = torch.cat((torch.cos(angles), torch.sin(angles)), -1)
    q, k = torch.randn(tokens, 4 * head), torch.randn(tokens, 2 * head)
    positions = torch.tensor([0, 3, 7, 1, 31, 2])
    for mode, neox in (("half", True), ("interleave", False)):
        q_out, k_out = npu_ops.npu_mrope(positions, q, k, cache, head, rotary_mode=mode)
        for x, out in ((q, q_out), (k, k_out)):
            heads = x.view(tokens, -1, head)
            rot = _rope_by_pairs(heads[..., :rotary], angles[positions][:, None, :], neox)
            close(out, torch.cat((rot, heads[..., rotary:]), -1).view(tokens, -1))
    # multimodal sections: each section's angles come from its own position row
    pos3 = torch.stack([positions, positions.flip(0), positions.roll(1)])
    q_out, _ = npu_ops.npu_mrope(pos3, q, k, cache, head, mrope_section=[1, 1, 2])
    section_of = [0, 1, 2, 2]
    mixed = torch.stack([angles[pos3[section_of[i]], i] for i in range(rotary // 2)], -1)
    heads = q.view(tokens, -1, head)
    rot = _rope_by_pairs(heads[..., :rotary], mixed[:, None, :], True)
    close(q_out, torch.cat((rot, heads[..., rotary:]), -1).view(tokens, -1))
    with pytest.raises(ValueError, match="outside the cache"):
        npu_ops.npu_mrope(torch.tensor([32]), q[:1], k[:1], cache, head)


def check_npu_scatter_pa_kv_cache() -> None:
    blocks, block, heads, d = 4, 8, 2, 16
    key_cache = torch.zeros(blocks, block, heads, d)
    value_cache = torch.zeros(blocks, block, heads, d)
    key, value = torch.randn(5, heads, d), torch.randn(5, heads, d)
    slots = torch.tensor([3, 9, 31, 0, 17])
    npu_ops.npu_scatter_pa_kv_cache(key, value, key_cache, value_cache, slots, cache_mode="Norm")
    for i, slot in enumerate(slots.tolist()):
        close(key_cache[slot // block, slot % block], key[i])
        close(value_cache[slot // block, slot % block], value[i])
    assert int((key_cache.abs().sum((-1, -2)) > 0).sum()) == 5  # nothing else written
    assert meta_of("npu_scatter_pa_kv_cache", key, value, key_cache, value_cache, slots,
                   cache_mode="Norm") is None  # in place: no outputs
    with pytest.raises(ValueError, match=r"slots must lie in \[0, 31\]"):
        npu_ops.npu_scatter_pa_kv_cache(key, value, key_cache, value_cache,
                                        torch.tensor([0, 1, 2, 3, -1]), cache_mode="Norm")
    with pytest.raises(NotImplementedError, match="NZ"):
        npu_ops.npu_scatter_pa_kv_cache(key, value, key_cache, value_cache, slots)


def _attention_by_request(q, k, v, q_lens, kv_lens, scale, causal):
    """softmax(scale·QKᵀ)·V per request and head, written out."""
    out, lse = [], []
    heads, kv_heads = q.shape[1], k[0].shape[1]
    for r, (ql, kl) in enumerate(zip(q_lens, kv_lens)):
        qr = q[sum(q_lens[:r]): sum(q_lens[:r]) + ql]
        rows, row_lse = [], []
        for i in range(ql):
            per_head, per_lse = [], []
            for h in range(heads):
                kh = h // (heads // kv_heads)
                visible = kl - ql + i + 1 if causal else kl
                s = (k[r][:visible, kh] @ qr[i, h]) * scale
                p = torch.softmax(s, 0)
                per_head.append(p @ v[r][:visible, kh])
                per_lse.append(torch.logsumexp(s, 0))
            rows.append(torch.stack(per_head))
            row_lse.append(torch.stack(per_lse))
        out += rows
        lse += row_lse
    return torch.stack(out), torch.stack(lse)[..., None]


def compressed_mask() -> torch.Tensor:
    size = emulation.COMPRESSED_MASK_SIZE
    return torch.triu(torch.ones(size, size, dtype=torch.int8), diagonal=1)


def check_npu_fused_infer_attention_score() -> None:
    heads, kv_heads, d, block = 4, 2, 16, 128
    scale = 1 / math.sqrt(d)
    # a prefill with cached context, a decode and a fresh prefill, paged
    q_lens, kv_lens = [3, 1, 5], [130, 260, 5]
    q = torch.randn(sum(q_lens), heads, d)
    k_req = [torch.randn(n, kv_heads, d) for n in kv_lens]
    v_req = [torch.randn(n, kv_heads, d) for n in kv_lens]
    blocks = 12
    key_cache = torch.zeros(blocks, block, kv_heads, d)
    value_cache = torch.zeros(blocks, block, kv_heads, d)
    table = torch.tensor([[5, 2, 0], [1, 7, 9], [11, 0, 0]], dtype=torch.int32)
    for r, n in enumerate(kv_lens):
        for pos in range(n):
            b = int(table[r, pos // block])
            key_cache[b, pos % block] = k_req[r][pos]
            value_cache[b, pos % block] = v_req[r][pos]
    cum_q = [sum(q_lens[: i + 1]) for i in range(3)]
    out, lse = npu_ops.npu_fused_infer_attention_score(
        q, key_cache.view(blocks, block, -1), value_cache.view(blocks, block, -1),
        atten_mask=compressed_mask(), block_table=table, input_layout="TND", block_size=block,
        actual_seq_lengths=cum_q, actual_seq_lengths_kv=kv_lens, num_heads=heads,
        num_key_value_heads=kv_heads, scale=scale, sparse_mode=3, softmax_lse_flag=True)
    expected, expected_lse = _attention_by_request(q, k_req, v_req, q_lens, kv_lens, scale, True)
    close(out, expected, 1e-4)
    close(lse, expected_lse, 1e-4)
    half = npu_ops.npu_fused_infer_attention_score(
        q.half(), key_cache.view(blocks, block, -1).half(),
        value_cache.view(blocks, block, -1).half(), atten_mask=compressed_mask(),
        block_table=table, input_layout="TND", block_size=block, actual_seq_lengths=cum_q,
        actual_seq_lengths_kv=kv_lens, num_heads=heads, num_key_value_heads=kv_heads,
        scale=scale, sparse_mode=3, softmax_lse_flag=True)
    close(half[0].float(), expected, 1e-2)
    for args, outputs in (((q, key_cache, value_cache), (out, lse)),
                          ((q.half(), key_cache.half(), value_cache.half()), half)):
        same_meta(outputs, meta_of(
            "npu_fused_infer_attention_score", args[0], args[1].view(blocks, block, -1),
            args[2].view(blocks, block, -1), atten_mask=compressed_mask(), block_table=table,
            input_layout="TND", block_size=block, actual_seq_lengths=cum_q,
            actual_seq_lengths_kv=kv_lens, num_heads=heads, num_key_value_heads=kv_heads,
            scale=scale, sparse_mode=3, softmax_lse_flag=True))
    # no cache: K and V in TND too, both lengths cumulative; no mask, no causality
    k_tnd, v_tnd = torch.cat(k_req), torch.cat(v_req)
    cum_kv = [sum(kv_lens[: i + 1]) for i in range(3)]
    out, _ = npu_ops.npu_fused_infer_attention_score(
        q, k_tnd, v_tnd, input_layout="TND", actual_seq_lengths=cum_q,
        actual_seq_lengths_kv=cum_kv, num_heads=heads, num_key_value_heads=kv_heads,
        scale=scale, sparse_mode=0)
    close(out, _attention_by_request(q, k_req, v_req, q_lens, kv_lens, scale, False)[0], 1e-4)
    # the incremental (decode) form: BSH, one query per request, paged, no mask
    decode_q = torch.randn(3, 1, heads * d)
    out, lse = npu_ops.npu_fused_infer_attention_score(
        decode_q, key_cache.view(blocks, block, -1), value_cache.view(blocks, block, -1),
        block_table=table, input_layout="BSH", block_size=block, actual_seq_lengths_kv=kv_lens,
        num_heads=heads, num_key_value_heads=kv_heads, scale=scale, softmax_lse_flag=True)
    expected, expected_lse = _attention_by_request(decode_q.view(3, heads, d), k_req, v_req,
                                                   [1, 1, 1], kv_lens, scale, False)
    close(out, expected.view(3, 1, heads * d), 1e-4)
    close(lse, expected_lse.view(3, heads, 1, 1), 1e-4)
    same_meta((out, lse), meta_of(
        "npu_fused_infer_attention_score", decode_q, key_cache.view(blocks, block, -1),
        value_cache.view(blocks, block, -1), block_table=table, input_layout="BSH",
        block_size=block, actual_seq_lengths_kv=kv_lens, num_heads=heads,
        num_key_value_heads=kv_heads, scale=scale, softmax_lse_flag=True))
    with pytest.raises(ValueError, match="compressed causal mask"):
        npu_ops.npu_fused_infer_attention_score(
            q, k_tnd, v_tnd, input_layout="TND", actual_seq_lengths=cum_q,
            actual_seq_lengths_kv=cum_kv, num_heads=heads, num_key_value_heads=kv_heads,
            atten_mask=compressed_mask().tril(), sparse_mode=3)
    with pytest.raises(NotImplementedError, match="quant_scale2"):
        npu_ops.npu_fused_infer_attention_score(
            q, k_tnd, v_tnd, input_layout="TND", actual_seq_lengths=cum_q,
            actual_seq_lengths_kv=cum_kv, num_heads=heads, quant_scale2=torch.ones(1))
    # the kernel takes a contiguous query only: not Q as a slice of QKV
    qkv = torch.cat([q, k_tnd[: q.shape[0]]], dim=1)
    with pytest.raises(ValueError, match="must be contiguous"):
        npu_ops.npu_fused_infer_attention_score(
            qkv[:, :heads], k_tnd, v_tnd, input_layout="TND", actual_seq_lengths=cum_q,
            actual_seq_lengths_kv=cum_kv, num_heads=heads, num_key_value_heads=kv_heads)
    with pytest.raises(ValueError, match="must be contiguous"):
        npu_ops.npu_fused_infer_attention_score(
            qkv[:3, :heads].reshape(3, 1, heads * d), key_cache.view(blocks, block, -1),
            value_cache.view(blocks, block, -1), block_table=table, input_layout="BSH",
            block_size=block, actual_seq_lengths_kv=kv_lens, num_heads=heads,
            num_key_value_heads=kv_heads)


def check_npu_moe_gating_top_k_softmax_v2() -> None:
    logits = torch.randn(6, 8)
    logits[2, 3] = logits[2, 5] = 9.0  # a tie: the lower expert comes first
    for renorm in (0, 1):
        y, idx, soft = npu_ops.npu_moe_gating_top_k_softmax_v2(logits, k=3, renorm=renorm,
                                                               output_softmax=True)
        assert idx.dtype == torch.int32 and y.dtype == logits.dtype
        for r in range(6):
            row = [float(v) for v in logits[r]]
            chosen = sorted(range(8), key=lambda e: (-row[e], e))[:3]
            assert idx[r].tolist() == chosen
            if renorm == 0:
                total = sum(math.exp(v) for v in row)
                weights = [math.exp(row[e]) / total for e in chosen]
            else:  # softmax over the chosen logits: the renormalised weights
                total = sum(math.exp(row[e]) for e in chosen)
                weights = [math.exp(row[e]) / total for e in chosen]
            close(y[r].double(), torch.tensor(weights, dtype=torch.float64))
        same_meta((y, idx, soft), meta_of("npu_moe_gating_top_k_softmax_v2", logits, k=3,
                                          renorm=renorm, output_softmax=True))
    assert idx[2, :2].tolist() == [3, 5]
    half = npu_ops.npu_moe_gating_top_k_softmax_v2(logits.bfloat16(), k=2, renorm=1)
    same_meta(half, meta_of("npu_moe_gating_top_k_softmax_v2", logits.bfloat16(), k=2,
                            renorm=1))
    with pytest.raises(ValueError, match="k=9"):
        npu_ops.npu_moe_gating_top_k_softmax_v2(logits, k=9)


def check_npu_moe_init_routing_v2() -> None:
    rows, k, hidden, experts = 5, 2, 4, 6
    x = torch.randn(rows, hidden)
    idx = torch.tensor([[3, 1], [0, 3], [5, 1], [1, 4], [3, 0]], dtype=torch.int32)
    for start, end in ((0, experts), (1, 4)):
        # the choices (token-major source rows) of experts in range, by expert, stably
        kept = sorted((int(idx[s // k, s % k]), s) for s in range(rows * k)
                      if start <= int(idx[s // k, s % k]) < end)
        sources = [s for _, s in kept]
        for row_type in (0, 1):
            out = npu_ops.npu_moe_init_routing_v2(
                x, idx, active_num=rows * k, expert_num=experts, expert_tokens_num_type=1,
                expert_tokens_num_flag=True, active_expert_range=[start, end],
                row_idx_type=row_type)
            expanded, row_idx, counts, _ = out
            for i, s in enumerate(sources):
                assert torch.equal(expanded[i], x[s // k])
                if row_type == 1:
                    assert int(row_idx[i]) == s
                else:
                    assert int(row_idx[s]) == i
            assert not expanded[len(sources):].any()
            if row_type == 1:
                assert (row_idx[len(sources):] == -1).all()
            else:
                dropped = set(range(rows * k)) - set(sources)
                assert all(int(row_idx[s]) == -1 for s in dropped)
            assert counts.tolist() == [sum(1 for e, _ in kept if e == ex)
                                       for ex in range(start, end)]
            same_meta(out, meta_of(
                "npu_moe_init_routing_v2", x, idx, active_num=rows * k, expert_num=experts,
                expert_tokens_num_type=1, expert_tokens_num_flag=True,
                active_expert_range=[start, end], row_idx_type=row_type))
    # cumsum counts are documented but "only 1 and 2 are supported"
    with pytest.raises(ValueError, match="expert_tokens_num_type=0"):
        npu_ops.npu_moe_init_routing_v2(x, idx, expert_num=experts,
                                        expert_tokens_num_flag=True)
    with pytest.raises(ValueError, match="expert ids"):
        npu_ops.npu_moe_init_routing_v2(x, idx, expert_num=5)
    with pytest.raises(NotImplementedError, match="quant_mode"):
        npu_ops.npu_moe_init_routing_v2(x, idx, expert_num=experts, quant_mode=1)


def check_npu_grouped_matmul() -> None:
    groups, k, n = 4, 6, 5
    sizes = [3, 0, 4, 2]
    x = torch.randn(sum(sizes) + 2, k)  # two rows past the last group
    w = torch.randn(groups, n, k).transpose(1, 2)  # (groups, k, n), a transposed view
    expected = torch.zeros(x.shape[0], n)
    start = 0
    for g, size in enumerate(sizes):
        for r in range(start, start + size):
            for c in range(n):
                expected[r, c] = sum(float(x[r, i]) * float(w[g, i, c]) for i in range(k))
        start += size
    for kind, group_list in ((1, torch.tensor(sizes)), (0, torch.tensor(sizes).cumsum(0))):
        (y,) = npu_ops.npu_grouped_matmul([x], [w], group_list=group_list, split_item=2,
                                          group_type=0, group_list_type=kind)
        close(y, expected, 1e-4)
        same_meta(tuple([y]), tuple(meta_of("npu_grouped_matmul", [x], [w],
                                            group_list=group_list, split_item=2,
                                            group_type=0, group_list_type=kind)))
    (half,) = npu_ops.npu_grouped_matmul([x.bfloat16()], [w.bfloat16()],
                                         group_list=torch.tensor(sizes), split_item=2,
                                         group_type=0, group_list_type=1)
    assert half.dtype == torch.bfloat16
    close(half.float(), expected, 0.1)
    with pytest.raises(ValueError, match="non-decreasing"):
        npu_ops.npu_grouped_matmul([x], [w], group_list=torch.tensor([3, 2, 5, 9]),
                                   split_item=2, group_type=0, group_list_type=0)
    # one group: sizes are refused (the docs: a length of 1 is not allowed),
    # the running sum is the form to pass
    one = torch.tensor([5])
    with pytest.raises(ValueError, match="length 1"):
        npu_ops.npu_grouped_matmul([x], [w[:1]], group_list=one, split_item=2, group_type=0,
                                   group_list_type=1)
    (y,) = npu_ops.npu_grouped_matmul([x], [w[:1]], group_list=one, split_item=2,
                                      group_type=0, group_list_type=0)
    close(y[:5], x[:5] @ w[0], 1e-4)
    with pytest.raises(NotImplementedError, match="bias"):
        npu_ops.npu_grouped_matmul([x], [w], bias=[torch.zeros(n)],
                                   group_list=torch.tensor(sizes), split_item=2, group_type=0)


def check_npu_moe_token_unpermute() -> None:
    # torch_npu 2.13.0's later doc entry: sorted_indices[t·K + j] is the row of
    # permuted_tokens holding token t's j-th choice; halves summed back give
    # [1, 2, 3, 4] (the other reading of the index would give 2.5 everywhere)
    permuted = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]] * 2)
    sorted_indices = torch.tensor([0, 4, 5, 1, 2, 6, 7, 3], dtype=torch.int32)
    probs = torch.full((4, 2), 0.5)
    out = npu_ops.npu_moe_token_unpermute(permuted, sorted_indices, probs)
    assert out.tolist() == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]
    same_meta(out, meta_of("npu_moe_token_unpermute", permuted, sorted_indices, probs))
    # any permutation and weights, written out token by token
    tokens, k, hidden = 5, 3, 4
    rows = torch.randn(tokens * k, hidden)
    perm = torch.randperm(tokens * k).to(torch.int32)
    weights = torch.rand(tokens, k)
    out = npu_ops.npu_moe_token_unpermute(rows, perm, weights)
    for t in range(tokens):
        expected = sum(float(weights[t, j]) * rows[int(perm[t * k + j])] for j in range(k))
        close(out[t], expected)
    with pytest.raises(ValueError, match="permutation"):
        npu_ops.npu_moe_token_unpermute(rows, torch.zeros(tokens * k, dtype=torch.int32),
                                        weights)
    with pytest.raises(ValueError, match="int32"):
        npu_ops.npu_moe_token_unpermute(rows, perm.long(), weights)


def test_routing_then_unpermute_gives_the_tokens_back() -> None:
    """The round trip Huawei's op test makes (permute, then unpermute with
    weights 1/K restores the tokens), here with the routing the MoE layer
    uses: npu_moe_init_routing_v2's gather index (row_idx_type=0) is the
    index npu_moe_token_unpermute takes."""
    g = torch.Generator().manual_seed(3)
    tokens, k, experts = 9, 3, 5
    x = torch.randn(tokens, 8, generator=g)
    idx = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)])
    expanded, rows, _, _ = npu_ops.npu_moe_init_routing_v2(
        x, idx.to(torch.int32), active_num=tokens * k, expert_num=experts, row_idx_type=0)
    back = npu_ops.npu_moe_token_unpermute(expanded, rows, torch.full((tokens, k), 1 / k))
    close(back, x)


def check_npu_fused_infer_attention_score__out() -> None:
    """The out= overload writes the functional form's result into the given
    tensors, and refuses an output of the wrong shape."""
    heads, kv_heads, d, block, blocks = 4, 2, 8, 128, 6
    cache = torch.randn(2, blocks, block, kv_heads * d)
    table = torch.tensor([[0, 3], [5, 1]], dtype=torch.int32)
    q = torch.randn(2, 1, heads * d)
    args = dict(block_table=table, input_layout="BSH", block_size=block,
                actual_seq_lengths_kv=[200, 3], num_heads=heads, num_key_value_heads=kv_heads,
                scale=0.3, softmax_lse_flag=True)
    want, want_lse = npu_ops.npu_fused_infer_attention_score(q, cache[0], cache[1], **args)
    buffer = torch.full((2, 1, heads * d), float("nan"))
    lse = torch.empty(2, heads, 1, 1)
    workspace = npu_ops._npu_fused_infer_attention_score_get_max_workspace(
        q, cache[0], cache[1], **args)
    got = npu_ops.npu_fused_infer_attention_score.out(q, cache[0], cache[1], **args,
                                                      workspace=workspace, out=[buffer, lse])
    assert got[0] is buffer and got[1] is lse
    assert torch.equal(buffer, want) and torch.equal(lse, want_lse)
    with pytest.raises(ValueError, match=r"out\[0\] must be"):
        npu_ops.npu_fused_infer_attention_score.out(
            q, cache[0], cache[1], **args, out=[torch.empty(2, heads * d), lse])
    # the keywords of torch_npu's yaml and docs, which its registered op does not take
    with pytest.raises(RuntimeError, match="missing value for argument 'out'"):
        npu_ops.npu_fused_infer_attention_score.out(
            q, cache[0], cache[1], **args, attention_out=buffer, softmax_lse=lse)


def check__npu_fused_infer_attention_score_get_max_workspace() -> None:
    """A byte tensor on the query's device, with the attention call's arguments;
    the emulated kernel needs no scratch memory, so it is empty."""
    q, kv = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    workspace = npu_ops._npu_fused_infer_attention_score_get_max_workspace(
        q, kv, kv, actual_seq_lengths=[3], actual_seq_lengths_kv=[3], num_heads=2,
        input_layout="TND", sparse_mode=3)
    assert workspace.dtype == torch.uint8 and workspace.device == q.device
    with npu_ops.counting() as seen:  # host tiling: no kernel runs
        npu_ops._npu_fused_infer_attention_score_get_max_workspace(q, kv, kv, num_heads=2)
    assert not seen


def _round_half_even(v: float) -> int:
    return round(v)  # Python's round() ties to even


def check_npu_quantize() -> None:
    x = torch.randn(3, 4, 6) * 4
    scales = torch.rand(6) + 0.05
    offsets = torch.tensor([-3.0, 0.0, 2.0, 5.0, -128.0, 7.0])
    for div_mode in (True, False):
        out = npu_ops.npu_quantize(x, scales, offsets, torch.qint8, -1, div_mode)
        assert out.dtype == torch.int8
        for idx in [(0, 0, 0), (1, 2, 3), (2, 3, 5), (0, 1, 4), (2, 0, 1)]:
            v = float(x[idx]) / float(scales[idx[-1]]) if div_mode else \
                float(x[idx]) * float(scales[idx[-1]])
            expected = max(-128, min(127, _round_half_even(v + float(offsets[idx[-1]]))))
            assert int(out[idx]) == expected, (div_mode, idx)
        same_meta(out, meta_of("npu_quantize", x, scales, offsets, torch.qint8, -1, div_mode))
    # one scale for the whole tensor, no offset: saturates at the int8 range
    big = torch.tensor([[1000.0, -1000.0, 0.5, 1.5, 2.5]])
    out = npu_ops.npu_quantize(big, torch.tensor([1.0]), None, torch.qint8, -1, True)
    assert out.tolist() == [[127, -128, 0, 2, 2]]  # ties to even
    # div_mode along axis 1 (a per-row scale)
    rows = npu_ops.npu_quantize(x[0], torch.tensor([1.0, 2.0, 4.0, 8.0]), None,
                                torch.qint8, 0, True)
    close(rows.float(), torch.round(x[0] / torch.tensor([[1.0], [2.0], [4.0], [8.0]])))
    with pytest.raises(ValueError, match="does not run along"):
        npu_ops.npu_quantize(x, torch.rand(5), None, torch.qint8, -1, True)


def check_npu_dynamic_quant() -> None:
    x = torch.randn(5, 16) * torch.tensor([[0.1], [1.0], [10.0], [3.0], [0.0]])
    y, scale = npu_ops.npu_dynamic_quant(x)
    assert y.dtype == torch.int8 and scale.dtype == torch.float32
    for i in range(4):
        row_max = max(abs(float(v)) for v in x[i])
        assert math.isclose(float(scale[i]), row_max / 127, rel_tol=1e-6)
        for j in range(16):
            assert int(y[i, j]) == _round_half_even(float(x[i, j]) / float(scale[i]))
    assert float(scale[4]) == 0 and not y[4].any()  # a row of zeros
    # the largest entry of each row maps to ±127, and y·scale is within half a step of x
    assert (y[:4].abs().amax(-1) == 127).all()
    assert ((y.float() * scale[:, None] - x).abs() <= scale[:, None] / 2 + 1e-6).all()
    smooth = torch.rand(16) + 0.5
    ys, ss = npu_ops.npu_dynamic_quant(x, smooth_scales=smooth)
    y2, s2 = npu_ops.npu_dynamic_quant(x * smooth)
    assert torch.equal(ys, y2) and torch.equal(ss, s2)
    same_meta((y, scale), meta_of("npu_dynamic_quant", x))
    x3 = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    same_meta(npu_ops.npu_dynamic_quant(x3), meta_of("npu_dynamic_quant", x3))
    with pytest.raises(NotImplementedError, match="group_index"):
        npu_ops.npu_dynamic_quant(x, group_index=torch.tensor([5], dtype=torch.int32))


def check_npu_quant_matmul() -> None:
    m, k, n = 4, 8, 5
    x1 = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    x2 = torch.randint(-128, 128, (k, n), dtype=torch.int8)
    scale = torch.rand(n) * 1e-3
    per_token = torch.rand(m) + 0.5
    bias = torch.randint(-5000, 5000, (n,), dtype=torch.int32)
    acc = [[sum(int(x1[i, t]) * int(x2[t, j]) for t in range(k)) for j in range(n)]
           for i in range(m)]
    # dequantized to a float dtype: (x1·x2 + int32 bias) · scale
    out = npu_ops.npu_quant_matmul(x1, x2, scale, bias=bias, output_dtype=torch.float32)
    expected = torch.tensor([[(acc[i][j] + int(bias[j])) * float(scale[j]) for j in range(n)]
                             for i in range(m)])
    close(out, expected)
    # per-token scale and a floating bias, as W8A8_DYNAMIC uses it
    fbias = torch.randn(n, dtype=torch.bfloat16)
    out = npu_ops.npu_quant_matmul(x1, x2, scale, pertoken_scale=per_token, bias=fbias,
                                   output_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    expected = torch.tensor([[acc[i][j] * float(scale[j]) * float(per_token[i])
                              + float(fbias[j]) for j in range(n)] for i in range(m)])
    close(out.float(), expected.to(torch.bfloat16).float(), 1e-2)
    same_meta(out, meta_of("npu_quant_matmul", x1, x2, scale, pertoken_scale=per_token,
                           bias=fbias, output_dtype=torch.bfloat16))
    # int8 out (the default): requantized with the offset, rounded and saturated.
    # A scale of 1/256 is exact in float32 and here, so a sum ending in 128/256 is a
    # true tie (0.01 would be 0.0099999998 in float32: a tie here, not there).
    q = npu_ops.npu_quant_matmul(x1, x2, torch.tensor([1 / 256]), offset=torch.tensor([3.0]))
    assert q.dtype == torch.int8
    assert q.tolist() == [[max(-128, min(127, _round_half_even(acc[i][j] / 256 + 3)))
                           for j in range(n)] for i in range(m)]
    with pytest.raises(ValueError, match="do not multiply"):
        npu_ops.npu_quant_matmul(x1, x2[:-1], scale)
    with pytest.raises(NotImplementedError, match="int64"):
        npu_ops.npu_quant_matmul(x1, x2, scale.to(torch.int64))


# check_<op>__<overload> checks torch_npu's <op>.<overload>
CHECKS = {name.removeprefix("check_").replace("__", "."): fn for name, fn in globals().items()
          if name.startswith("check_")}


@pytest.mark.parametrize("op", sorted(emulation.REFERENCES))
def test_reference(op: str) -> None:
    assert op in CHECKS, f"{op} has a reference but no check against plain math"
    CHECKS[op]()


def _schemas(op: str) -> list[tuple[list, dict]]:
    """The schema torch_npu's library registers for ``op`` (see npu_schemas), as
    positional (name, default) pairs in order and keyword-only {name: default}.
    The wheel's yaml may disagree with it; the binary is what a call meets."""
    found = []
    schema = registered_schemas().get(op, "")
    for match in re.finditer(rf"^{re.escape(op)}\((.*?)\) ->", schema):
        positional, keywords, keyword_only = [], {}, False
        for part in match.group(1).split(","):
            part = part.strip()
            if part == "*":
                keyword_only = True
                continue
            declared, _, default = part.partition("=")
            name = declared.split()[-1]
            value = ast.literal_eval(default.replace("true", "True").replace(
                "false", "False")) if default else inspect.Parameter.empty
            if keyword_only:
                keywords[name] = value
            else:
                positional.append((name, value))
        found.append((positional, keywords))
    assert found, f"{op} has no schema in torch_npu 2.13.0"
    return found


@pytest.mark.parametrize("op", sorted(emulation.REFERENCES))
def test_reference_has_torch_npus_signature(op: str) -> None:
    """Same positional arguments in order, same keyword-only ones, same defaults
    as one of torch_npu's schemas of the op."""
    params = inspect.signature(emulation.REFERENCES[op]).parameters.values()
    positional = [(p.name, p.default) for p in params if p.kind is not p.KEYWORD_ONLY]
    keywords = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    assert (positional, keywords) in _schemas(op)


def _npu_calls(path: Path) -> set[tuple[str, str]]:
    """Names of NPU ops a module calls: npu_ops.X, npu_ops.X.out (as "X.out")
    and any torch_npu.X."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in ("npu_ops", "torch_npu"):
            names.add((node.value.id, node.attr))
        if isinstance(node, ast.Attribute) and node.attr == "out" and \
                isinstance(node.value, ast.Attribute) and \
                isinstance(node.value.value, ast.Name) and node.value.value.id == "npu_ops":
            names.add(("npu_ops", f"{node.value.attr}.out"))
    return names


def test_the_plugin_calls_only_npu_ops_with_a_reference() -> None:
    helpers = set(vars(npu_ops))  # npu_ops's own functions and sets; the rest are NPU ops
    called: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.name in ("npu_ops.py", "emulation.py"):
            continue
        for module, name in _npu_calls(path):
            assert module == "npu_ops", (
                f"{path.name} calls torch_npu.{name} directly; go through npu_ops")
            if name not in helpers:
                called.setdefault(name, set()).add(path.name)
    missing = {name: files for name, files in called.items() if name not in emulation.REFERENCES}
    assert not missing, f"NPU ops called without a reference: {missing}"
    assert called, "the scan found no NPU op calls at all"


def test_emulated_calls_go_through_torch_npus_registered_schemas() -> None:
    """The session routes every emulated call through the schema torch_npu's
    library registers (conftest): a call the kernel would refuse fails here."""
    assert npu_ops._router is through_schemas
    with pytest.raises(RuntimeError, match="npu_wheel::npu_swiglu"):
        npu_ops.npu_swiglu(torch.randn(2, 4), dim=-1, bogus=1)


def test_an_op_without_reference_cannot_be_called() -> None:
    with pytest.raises(AttributeError, match="no reference implementation"):
        npu_ops.npu_moe_distribute_dispatch_v2  # noqa: B018


def test_launches_are_counted() -> None:
    with npu_ops.counting() as seen:
        npu_ops.npu_swiglu(torch.randn(2, 4))
        npu_ops.npu_swiglu(torch.randn(2, 4))
    assert seen == {"npu_swiglu": 2}
    assert npu_ops.launches["npu_swiglu"] >= 2


def test_what_the_host_stands_in_for_counts_as_the_one_kernel() -> None:
    """A bfloat16 product the host widens to float32 (two conversions, the
    product, one rounding back) is the NPU's one matrix product."""
    x, w = torch.randn(4, 8).bfloat16(), torch.randn(3, 8).bfloat16()
    with torch.inference_mode():  # as the engine runs
        with npu_ops.count_device_launches() as widened, npu_ops.stand_in("linear"):
            torch.nn.functional.linear(x.float(), w.float()).to(torch.bfloat16)
        with npu_ops.count_device_launches() as plain:
            torch.nn.functional.linear(x.float(), w.float()).to(torch.bfloat16)
    assert widened.kernels == {"aten.linear": 1}
    assert plain.kernels == {"aten.linear": 1, "aten.to": 3}


def test_scalar_type_numbers_are_what_the_dispatcher_passes() -> None:
    """torch_npu registers dtype arguments as ``int``: the kernel (and the
    reference) gets the number the dispatcher makes of a torch dtype."""
    seen: list[int] = []
    library = torch.library.Library("npu_dtype_probe", "DEF")
    library.define("probe(Tensor x, int dtype) -> Tensor")
    library.impl("probe", lambda x, dtype: (seen.append(dtype), x)[1],
                 "CompositeExplicitAutograd")
    for number, dtype in emulation.SCALAR_TYPES.items():
        torch.ops.npu_dtype_probe.probe(torch.zeros(1), dtype)
        assert seen[-1] == number, dtype
        assert emulation.as_dtype(number) is dtype
