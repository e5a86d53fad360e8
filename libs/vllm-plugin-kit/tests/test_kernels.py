"""The PyTorch forms of vLLM's Triton kernels, against plain math and vLLM's own launcher."""

from __future__ import annotations

import torch
from vllm_plugin_kit.kernels import compute_slot_mapping

BLOCK = 4


def test_slot_mapping_matches_block_table_lookup():
    torch.manual_seed(0)
    table = torch.randint(0, 50, (5, 8), dtype=torch.int32)
    query_lens = [3, 1, 7, 2]
    starts = [0, 5, 11, 2]  # tokens already computed per request
    qsl = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, query_lens)])
    slots = torch.full((20,), 123, dtype=torch.int64)
    compute_slot_mapping(int(qsl[-1]), 16, qsl, positions, table, 8, slots, BLOCK)
    expected = [int(table[r, p // BLOCK]) * BLOCK + p % BLOCK
                for r, (s, n) in enumerate(zip(starts, query_lens)) for p in range(s, s + n)]
    assert slots[: len(expected)].tolist() == expected
    assert slots[len(expected):16].eq(-1).all()  # padding up to max_num_tokens
    assert slots[16:].eq(123).all()  # nothing written past it


def test_the_override_survives_vllms_jit_warmup():
    """vLLM's GPU worker warms every JIT kernel at start, calling its ``warmup``;
    the registered override has one that does nothing, so the warm-up passes."""
    from vllm.v1.worker.block_table import ComputeSlotMappingKernel
    from vllm_plugin_kit.kernels import register_overrides

    register_overrides()
    kernel = ComputeSlotMappingKernel()
    key = kernel.CompileKey(kv_cache_block_size=16, total_cp_world_size=1, total_cp_rank=0,
                            cp_kv_cache_interleave_size=1, block_table_stride=8)
    kernel.compile(key)  # raised AssertionError (no warmup) before
    # and the override computes slots through vLLM's own launcher
    table = torch.arange(16, dtype=torch.int32).reshape(2, 8)
    slots = torch.empty(6, dtype=torch.int64)
    kernel(num_reqs=2, num_tokens=3, max_num_tokens=6,
           query_start_loc=torch.tensor([0, 2, 3], dtype=torch.int32),
           positions=torch.tensor([0, 17, 5]), block_table=table, block_table_stride=8,
           slot_mapping=slots, kv_cache_block_size=16, total_cp_world_size=1,
           total_cp_rank=0, cp_kv_cache_interleave_size=1)
    assert slots.tolist() == [0, 1 * 16 + 1, 8 * 16 + 5, -1, -1, -1]
