"""The host paged attention against dense causal attention."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm_plugin_kit.attention import HostAttentionImpl, build_metadata

BLOCK = 4
HEADS, KV_HEADS, HEAD = 6, 2, 8


def _paged_cache(num_blocks: int, dtype=torch.float32) -> torch.Tensor:
    """A [blocks, kv_heads, block_size, 2*head] view over LBNHC memory, as vLLM allocates it."""
    return torch.zeros(num_blocks, BLOCK, KV_HEADS, 2 * HEAD, dtype=dtype).permute(0, 2, 1, 3)


def _reference(q, keys, values, context_len, window=None):
    """Causal attention of one request: q [Q, H, D], keys/values [S, Hkv, D];
    with a window, each query sees the ``window`` positions ending at its own."""
    groups = HEADS // KV_HEADS
    k = keys.repeat_interleave(groups, dim=1).transpose(0, 1)
    v = values.repeat_interleave(groups, dim=1).transpose(0, 1)
    scores = q.transpose(0, 1) @ k.transpose(1, 2) / HEAD**0.5  # [H, Q, S]
    q_pos = context_len + torch.arange(q.shape[0])
    mask = torch.arange(keys.shape[0])[None, :] <= q_pos[:, None]
    if window is not None:
        mask &= torch.arange(keys.shape[0])[None, :] > q_pos[:, None] - window
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1)  # [Q, H, D]


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_batch_matches_dense_attention(dtype, window):
    """Decodes, a fresh prefill, a prefix-cache hit and a chunk in one batch,
    with full attention and with a sliding window shorter than every request."""
    torch.manual_seed(0)
    # (context already cached, new query tokens); decodes first, as vLLM orders them
    requests = [(9, 1), (3, 1), (0, 6), (8, 5), (5, 3)]
    num_blocks = 40
    cache = _paged_cache(num_blocks, dtype)
    perm = torch.randperm(num_blocks)
    table = torch.zeros(len(requests), 8, dtype=torch.int32)
    keys, values, queries, slots = [], [], [], []
    next_block = 0
    impl = HostAttentionImpl(HEADS, HEAD, HEAD**-0.5, KV_HEADS, sliding_window=window)
    for r, (ctx, new) in enumerate(requests):
        total = ctx + new
        nblocks = -(-total // BLOCK)
        table[r, :nblocks] = perm[next_block: next_block + nblocks].to(torch.int32)
        next_block += nblocks
        k = torch.randn(total, KV_HEADS, HEAD).to(dtype)
        v = torch.randn(total, KV_HEADS, HEAD).to(dtype)
        keys.append(k)
        values.append(v)
        queries.append(torch.randn(new, HEADS, HEAD).to(dtype))
        pos = torch.arange(total)
        req_slots = table[r, pos // BLOCK].to(torch.int64) * BLOCK + pos % BLOCK
        # the cached context was written by earlier steps
        impl.do_kv_cache_update(None, k[:ctx], v[:ctx], cache, req_slots[:ctx])
        slots.append(req_slots[ctx:])
    query_lens = torch.tensor([new for _, new in requests])
    qsl = torch.cat([torch.zeros(1, dtype=torch.int64), query_lens.cumsum(0)])
    meta = SimpleNamespace(
        causal=True, num_reqs=len(requests), num_actual_tokens=int(qsl[-1]),
        max_query_len=int(query_lens.max()), query_start_loc_cpu=qsl,
        seq_lens=torch.tensor([c + n for c, n in requests]), block_table_tensor=table,
        slot_mapping=torch.cat(slots),
    )
    attn = build_metadata(meta, BLOCK)
    assert attn.decode is not None and attn.decode.query_valid.shape[0] == 2
    new_k = torch.cat([k[c:] for k, (c, _) in zip(keys, requests)])
    new_v = torch.cat([v[c:] for v, (c, _) in zip(values, requests)])
    impl.do_kv_cache_update(None, new_k, new_v, cache, attn.slot_mapping)
    q = torch.cat(queries)
    out = torch.full((q.shape[0], HEADS * HEAD), float("nan"), dtype=dtype)
    impl.forward(None, q.view(-1, HEADS * HEAD), new_k, new_v, cache, attn, out)
    expected = torch.cat([
        _reference(qr.float(), k.float(), v.float(), ctx, window)
        for qr, k, v, (ctx, _) in zip(queries, keys, values, requests)
    ]).reshape(q.shape[0], -1)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)


def test_padding_slots_are_not_written():
    cache = _paged_cache(2)
    impl = HostAttentionImpl(HEADS, HEAD, 1.0, KV_HEADS)
    k = torch.ones(3, KV_HEADS, HEAD)
    impl.do_kv_cache_update(None, k, 2 * k, cache, torch.tensor([5, -1, -1]))
    flat = cache.permute(0, 2, 1, 3).reshape(2 * BLOCK, KV_HEADS, 2 * HEAD)
    assert flat[5, :, :HEAD].eq(1).all() and flat[5, :, HEAD:].eq(2).all()
    assert flat.abs().sum() == flat[5].abs().sum()  # nothing else written


def test_unsupported_attention_features_are_refused():
    class Owned(HostAttentionImpl):
        OWNER = "my_npu"

    with pytest.raises(NotImplementedError,
                       match="my_npu attention does not support ALiBi, logits soft cap"):
        Owned(HEADS, HEAD, 1.0, KV_HEADS, sliding_window=128, alibi_slopes=[1.0],
              logits_soft_cap=30.0)


def test_padded_rows_of_the_output_are_zeroed():
    """A step padded to a compiled size: rows past the real tokens come out as
    zeros, not as the uninitialised memory vLLM allocated."""
    cache = _paged_cache(4)
    impl = HostAttentionImpl(HEADS, HEAD, HEAD**-0.5, KV_HEADS)
    k = torch.randn(5, KV_HEADS, HEAD)  # two padded tokens, slot -1
    qsl = torch.tensor([0, 3])
    meta = SimpleNamespace(
        causal=True, num_reqs=1, num_actual_tokens=3, max_query_len=3,
        query_start_loc_cpu=qsl, seq_lens=torch.tensor([3]),
        block_table_tensor=torch.tensor([[1, 2]], dtype=torch.int32),
        slot_mapping=torch.tensor([4, 5, 6, -1, -1]),
    )
    attn = build_metadata(meta, BLOCK)
    impl.do_kv_cache_update(None, k, k, cache, attn.slot_mapping)
    out = torch.full((5, HEADS * HEAD), float("nan"))
    impl.forward(None, torch.randn(5, HEADS * HEAD), k, k, cache, attn, out)
    assert out[:3].isfinite().all() and out[3:].eq(0).all()


def test_encoder_only_layers_attend_to_their_own_tokens_unmasked():
    """Encoder-only layers (BERT) keep no cache: each request's queries see all of
    its own tokens of the step and none of another's, whatever the cache holds."""
    from vllm.v1.attention.backend import AttentionType

    torch.manual_seed(1)
    lengths = [1, 5, 3]  # a one-token prompt comes first, as a decode would
    impl = HostAttentionImpl(HEADS, HEAD, HEAD**-0.5, KV_HEADS,
                             attn_type=AttentionType.ENCODER_ONLY)
    keys = [torch.randn(n, KV_HEADS, HEAD) for n in lengths]
    values = [torch.randn(n, KV_HEADS, HEAD) for n in lengths]
    queries = [torch.randn(n, HEADS, HEAD) for n in lengths]
    qsl = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    meta = SimpleNamespace(
        causal=False, num_reqs=3, num_actual_tokens=sum(lengths), max_query_len=max(lengths),
        query_start_loc_cpu=qsl, seq_lens=torch.tensor(lengths),
        # vLLM's block table of an encoder-only group: one column of zeros
        block_table_tensor=torch.zeros(3, 1, dtype=torch.int32),
        slot_mapping=torch.full((sum(lengths),), -1))
    attn = build_metadata(meta, BLOCK)
    cache = torch.full((1, KV_HEADS, BLOCK, 2 * HEAD), float("nan"))  # never read
    k, v, q = torch.cat(keys), torch.cat(values), torch.cat(queries)
    impl.do_kv_cache_update(None, k, v, cache, meta.slot_mapping)
    out = torch.full((q.shape[0], HEADS * HEAD), float("nan"))
    impl.forward(None, q.view(-1, HEADS * HEAD), k.view(len(q), -1), v.view(len(q), -1),
                 cache, attn, out)
    groups = HEADS // KV_HEADS
    expected = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        qr.transpose(0, 1), kr.repeat_interleave(groups, 1).transpose(0, 1),
        vr.repeat_interleave(groups, 1).transpose(0, 1)).transpose(0, 1)
        for qr, kr, vr in zip(queries, keys, values)]).reshape(q.shape[0], -1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.isnan(cache).all(), "an encoder-only layer wrote to the cache"
