"""The plugin's parts checked against plain math, without an engine."""

from __future__ import annotations

import pytest
import torch

# The plugin is imported inside each test, so that this file's import order
# does not depend on whether a linter counts the package as first-party.

BLOCK = 4
HEADS, KV_HEADS, HEAD = 6, 2, 8


def test_register_only_when_selected(monkeypatch):
    import vllm_spyre_like

    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    monkeypatch.delenv("VLLM_SPYRE_LIKE", raising=False)
    assert vllm_spyre_like.register() is None
    monkeypatch.setenv("VLLM_PLUGINS", "cpu_sim")
    assert vllm_spyre_like.register() is None
    monkeypatch.setenv("VLLM_PLUGINS", "cpu_sim,spyre_like")
    assert vllm_spyre_like.register() == vllm_spyre_like.PLATFORM
    monkeypatch.delenv("VLLM_PLUGINS")
    monkeypatch.setenv("VLLM_SPYRE_LIKE", "1")
    assert vllm_spyre_like.register() == vllm_spyre_like.PLATFORM


def test_slot_mapping_matches_block_table_lookup():
    from vllm_spyre_like.kernels import compute_slot_mapping

    torch.manual_seed(0)
    table = torch.randint(0, 50, (3, 8), dtype=torch.int32)
    query_lens, starts = [3, 1, 5], [0, 6, 2]  # new tokens, tokens already cached
    qsl = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, query_lens)])
    slots = torch.zeros(12, dtype=torch.int64)
    compute_slot_mapping(9, 12, qsl, positions, table, 8, slots, BLOCK)
    expected = [int(table[r, p // BLOCK]) * BLOCK + p % BLOCK
                for r, (s, n) in enumerate(zip(starts, query_lens)) for p in range(s, s + n)]
    assert slots[:9].tolist() == expected
    assert slots[9:].eq(-1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("requests", [
    [(9, 1), (0, 6), (5, 3)],  # a decode, a prefill and a prefix-cache hit
    [(9, 1), (2, 1), (20, 1), (0, 1)],  # a decode batch
], ids=["mixed", "decode"])
def test_paged_attention_equals_sdpa(dtype, requests):
    """Requests (tokens already cached, new tokens) in scattered blocks, against
    SDPA over each request's contiguous K/V."""
    from vllm_spyre_like.attention import (
        SpyreLikeAttentionImpl,
        SpyreLikeAttentionMetadata,
        padded_batch,
    )

    torch.manual_seed(0)
    num_blocks = 16
    # [blocks, kv_heads, block_size, 2 * head] over block-token-head memory, as vLLM allocates
    cache = torch.zeros(num_blocks, BLOCK, KV_HEADS, 2 * HEAD, dtype=dtype).permute(0, 2, 1, 3)
    free_blocks = torch.randperm(num_blocks).tolist()
    table = torch.zeros(len(requests), 8, dtype=torch.int64)
    impl = SpyreLikeAttentionImpl(HEADS, HEAD, HEAD**-0.5, KV_HEADS)
    keys, values, queries, new_slots, expected = [], [], [], [], []
    for r, (cached, new) in enumerate(requests):
        total = cached + new
        for b in range((total + BLOCK - 1) // BLOCK):
            table[r, b] = free_blocks.pop()
        k = torch.randn(total, KV_HEADS, HEAD, dtype=dtype)
        v = torch.randn(total, KV_HEADS, HEAD, dtype=dtype)
        q = torch.randn(new, HEADS, HEAD, dtype=dtype)
        slots = [int(table[r, p // BLOCK]) * BLOCK + p % BLOCK for p in range(total)]
        # the cached context is already in the cache (earlier steps wrote it)
        impl.do_kv_cache_update(None, k[:cached], v[:cached], cache,
                                torch.tensor(slots[:cached], dtype=torch.int64))
        keys.append(k[cached:])
        values.append(v[cached:])
        queries.append(q)
        new_slots += slots[cached:]
        mask = torch.ones(new, total, dtype=torch.bool).tril(diagonal=cached)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1).float(), k.transpose(0, 1).float(), v.transpose(0, 1).float(),
            attn_mask=mask, scale=HEAD**-0.5, enable_gqa=True,
        )
        expected.append(ref.transpose(0, 1))
    # one padding token (slot -1) at the end, as vLLM pads batches
    key = torch.cat([*keys, torch.zeros(1, KV_HEADS, HEAD, dtype=dtype)])
    value = torch.cat([*values, torch.zeros(1, KV_HEADS, HEAD, dtype=dtype)])
    query = torch.cat([*queries, torch.zeros(1, HEADS, HEAD, dtype=dtype)])
    impl.do_kv_cache_update(None, key, value, cache, torch.tensor([*new_slots, -1]))
    qsl = torch.tensor([0, *torch.tensor([n for _, n in requests]).cumsum(0).tolist()])
    seq_lens = torch.tensor([c + n for c, n in requests])
    kv_slots, mask, query_index, query_valid = padded_batch(qsl, seq_lens, table, BLOCK)
    meta = SpyreLikeAttentionMetadata(
        num_actual_tokens=int(qsl[-1]), kv_slots=kv_slots, mask=mask,
        query_index=query_index, query_valid=query_valid,
        slot_mapping=torch.tensor([*new_slots, -1]),
    )
    output = torch.full((query.shape[0], HEADS * HEAD), float("nan"), dtype=dtype)
    impl.forward(None, query.view(-1, HEADS * HEAD), key, value, cache, meta, output)
    got = output[: int(qsl[-1])].view(-1, HEADS, HEAD).float()
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, torch.cat(expected), atol=tolerance, rtol=tolerance)


def _linear_layer(out_features: int, in_features: int, dtype: torch.dtype) -> torch.nn.Module:
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.randn(out_features, in_features).to(dtype),
                                       requires_grad=False)
    module.quant_method = UnquantizedLinearMethod()
    return module


@pytest.mark.parametrize("rows", [1, 3, 4, 300])
def test_widened_bfloat16_product_rounds_once(rows):
    """float32 accumulation and one rounding to bfloat16, as the bfloat16 GEMM."""
    from vllm_spyre_like.host_linear import MIN_ROWS, WidenedBF16LinearMethod

    gen = torch.Generator().manual_seed(rows)
    layer = _linear_layer(48, 640, torch.bfloat16)
    bias = torch.randn(48, generator=gen).bfloat16()
    x = torch.randn(rows, 640, generator=gen).bfloat16()
    out = WidenedBF16LinearMethod().apply(layer, x, bias)
    exact = x.double() @ layer.weight.double().t() + bias.double()
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 48)
    # one rounding is within half a bfloat16 step (|v| * 2**-8); torch's own
    # product of few rows rounds the product, then its sum with the bias
    half_step = exact.abs() * 2.0**-8
    bound = half_step if rows >= MIN_ROWS else 2 * half_step
    assert bool(((out.double() - exact).abs() <= bound + 1e-5).all())


def test_only_unquantized_bfloat16_layers_widened_where_the_host_needs_it():
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    from vllm_spyre_like.host_linear import (
        WidenedBF16LinearMethod,
        host_has_native_bf16_gemm,
        widen_bf16_products,
    )

    model = torch.nn.ModuleDict({"bf16": _linear_layer(8, 16, torch.bfloat16),
                                 "fp32": _linear_layer(8, 16, torch.float32),
                                 "plain": torch.nn.Linear(16, 8)})
    native = host_has_native_bf16_gemm()
    assert widen_bf16_products(model) == (0 if native else 1)
    assert type(model["bf16"].quant_method) is (
        UnquantizedLinearMethod if native else WidenedBF16LinearMethod)
    assert type(model["fp32"].quant_method) is UnquantizedLinearMethod
