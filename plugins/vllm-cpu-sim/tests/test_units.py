"""The plugin's parts checked against plain math, without an engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import free_port

from vllm_cpu_sim.attention import CpuSimAttentionImpl, build_metadata
from vllm_cpu_sim.envs import SimConfig, parse_bytes
from vllm_cpu_sim.kernels import compute_slot_mapping

BLOCK = 4
HEADS, KV_HEADS, HEAD = 6, 2, 8


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize(("text", "size"), [
    ("512MiB", 512 << 20), ("2GiB", 2 << 30), ("1.5 GiB", 3 << 29), ("1000", 1000),
    ("3gb", 3 * 1000**3), (4096, 4096),
])
def test_parse_bytes(text, size):
    assert parse_bytes(text, "X") == size


@pytest.mark.parametrize("text", ["lots", "-1GiB", "0", "12 parsecs", ""])
def test_parse_bytes_names_the_setting(text):
    with pytest.raises(ValueError, match="MY_SETTING"):
        parse_bytes(text, "MY_SETTING")


def test_additional_config_wins_over_env(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_SIM_DEVICE_MEMORY", "1GiB")
    assert SimConfig.load().device_memory == 1 << 30
    assert SimConfig.load({"cpu_sim": {"device_memory": "3GiB"}}).device_memory == 3 << 30


def test_unknown_additional_config_key_is_refused():
    with pytest.raises(ValueError, match=r"unknown additional_config\.cpu_sim keys.*memory"):
        SimConfig.load({"cpu_sim": {"memory": "1GiB"}})


def test_packed_linear_setting(monkeypatch):
    assert SimConfig.load().packed_linear is True
    monkeypatch.setenv("VLLM_CPU_SIM_PACKED_LINEAR", "0")
    assert SimConfig.load().packed_linear is False
    assert SimConfig.load({"cpu_sim": {"packed_linear": True}}).packed_linear is True
    monkeypatch.setenv("VLLM_CPU_SIM_PACKED_LINEAR", "maybe")
    with pytest.raises(ValueError, match="VLLM_CPU_SIM_PACKED_LINEAR='maybe' must be 0 or 1"):
        SimConfig.load()
    with pytest.raises(ValueError, match="packed_linear=2 must be true or false"):
        SimConfig.load({"cpu_sim": {"packed_linear": 2}})
    with pytest.raises(ValueError,
                       match=r"additional_config\.cpu_sim\.packed_linear='no' must be 0 or 1"):
        SimConfig.load({"cpu_sim": {"packed_linear": "no"}})


def test_bad_thread_count_is_refused(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_SIM_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="VLLM_CPU_SIM_NUM_THREADS"):
        SimConfig.load()


# ---------------------------------------------------------------- selection

def test_register_follows_selection(monkeypatch):
    import vllm_cpu_sim

    monkeypatch.setenv("VLLM_CPU_SIM", "0")
    assert vllm_cpu_sim.register() is None
    monkeypatch.setenv("VLLM_CPU_SIM", "1")
    assert vllm_cpu_sim.register() == "vllm_cpu_sim.platform.CpuSimPlatform"
    monkeypatch.setenv("VLLM_CPU_SIM", "maybe")
    assert vllm_cpu_sim.register() is None
    monkeypatch.delenv("VLLM_CPU_SIM")
    monkeypatch.setattr(vllm_cpu_sim, "_accelerator_visible", lambda: True)
    assert vllm_cpu_sim.register() is None
    monkeypatch.setattr(vllm_cpu_sim, "_accelerator_visible", lambda: False)
    assert vllm_cpu_sim.register() == "vllm_cpu_sim.platform.CpuSimPlatform"


# ---------------------------------------------------------------- slot mapping

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


# ---------------------------------------------------------------- attention

def _paged_cache(num_blocks: int, dtype=torch.float32) -> torch.Tensor:
    """A [blocks, kv_heads, block_size, 2*head] view over LBNHC memory, as vLLM allocates it."""
    return torch.zeros(num_blocks, BLOCK, KV_HEADS, 2 * HEAD, dtype=dtype).permute(0, 2, 1, 3)


def _reference(q, keys, values, context_len):
    """Causal attention of one request: q [Q, H, D], keys/values [S, Hkv, D]."""
    groups = HEADS // KV_HEADS
    k = keys.repeat_interleave(groups, dim=1).transpose(0, 1)
    v = values.repeat_interleave(groups, dim=1).transpose(0, 1)
    scores = q.transpose(0, 1) @ k.transpose(1, 2) / HEAD**0.5  # [H, Q, S]
    q_pos = context_len + torch.arange(q.shape[0])
    mask = torch.arange(keys.shape[0])[None, :] <= q_pos[:, None]
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1)  # [Q, H, D]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_batch_matches_dense_attention(dtype):
    """Decodes, a fresh prefill, a prefix-cache hit and a chunk in one batch."""
    torch.manual_seed(0)
    # (context already cached, new query tokens); decodes first, as vLLM orders them
    requests = [(9, 1), (3, 1), (0, 6), (8, 5), (5, 3)]
    num_blocks = 40
    cache = _paged_cache(num_blocks, dtype)
    perm = torch.randperm(num_blocks)
    table = torch.zeros(len(requests), 8, dtype=torch.int32)
    keys, values, queries, slots = [], [], [], []
    next_block = 0
    impl = CpuSimAttentionImpl(HEADS, HEAD, HEAD**-0.5, KV_HEADS)
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
        _reference(qr.float(), k.float(), v.float(), ctx)
        for qr, k, v, (ctx, _) in zip(queries, keys, values, requests)
    ]).reshape(q.shape[0], -1)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)


def test_padding_slots_are_not_written():
    cache = _paged_cache(2)
    impl = CpuSimAttentionImpl(HEADS, HEAD, 1.0, KV_HEADS)
    k = torch.ones(3, KV_HEADS, HEAD)
    impl.do_kv_cache_update(None, k, 2 * k, cache, torch.tensor([5, -1, -1]))
    flat = cache.permute(0, 2, 1, 3).reshape(2 * BLOCK, KV_HEADS, 2 * HEAD)
    assert flat[5, :, :HEAD].eq(1).all() and flat[5, :, HEAD:].eq(2).all()
    assert flat.abs().sum() == flat[5].abs().sum()  # nothing else written


def test_unsupported_attention_features_are_refused():
    with pytest.raises(NotImplementedError, match="sliding window"):
        CpuSimAttentionImpl(HEADS, HEAD, 1.0, KV_HEADS, sliding_window=128)


# ---------------------------------------------------------------- custom ops

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_vllm_reference(dtype):
    from vllm.config import VllmConfig, set_current_vllm_config

    from vllm_cpu_sim.ops import CpuSimRMSNorm

    with set_current_vllm_config(VllmConfig()):
        norm = CpuSimRMSNorm(64, eps=1e-5, dtype=dtype)
    torch.manual_seed(0)
    norm.weight.data = torch.randn(64).to(dtype)
    x = torch.randn(7, 64).to(dtype)
    res = torch.randn(7, 64).to(dtype)
    x32, w32 = x.float(), norm.weight.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)
    expected = normed.to(dtype) * w32.to(dtype)
    torch.testing.assert_close(norm.forward_oot(x), expected)
    out, new_res = norm.forward_oot(x, res)
    summed = x.float() + res.float()
    torch.testing.assert_close(new_res, summed.to(dtype))
    expected = (summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    torch.testing.assert_close(out, expected * norm.weight)


def test_rms_norm_registration_replaces_vllm_layer():
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.custom_op import op_registry_oot
    from vllm.model_executor.layers.layernorm import RMSNorm

    from vllm_cpu_sim import ops

    ops.register()
    ops.register()  # a second call changes nothing
    assert op_registry_oot["RMSNorm"] is ops.CpuSimRMSNorm
    with set_current_vllm_config(VllmConfig()):
        assert type(RMSNorm(64)) is ops.CpuSimRMSNorm


# ---------------------------------------------------------------- linear layers

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 32, 300])
def test_packed_linear_matches_plain_math(dtype, rows):
    from vllm_cpu_sim.linear import pack_weight, packed_linear

    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(40, 24, generator=gen).to(dtype)
    bias = torch.randn(40, generator=gen).to(dtype)
    # a non-contiguous 3-D input: the transpose of [24, rows, 2]
    x = torch.randn(24, rows, 2, generator=gen).to(dtype).permute(1, 2, 0)
    out = packed_linear(x, pack_weight(weight), 40, bias)
    expected = x.double() @ weight.double().t() + bias.double()
    assert out.shape == (rows, 2, 40) and out.dtype == dtype
    tol = {"atol": 1e-4, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.1, "rtol": 0.02}
    torch.testing.assert_close(out.double(), expected, **tol)


def test_pack_model_swaps_methods_and_keeps_shared_weights():
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    from vllm_cpu_sim.linear import PackedLinearMethod, pack_model

    def layer(weight: torch.nn.Parameter) -> torch.nn.Module:
        module = torch.nn.Module()
        module.weight = weight
        module.quant_method = UnquantizedLinearMethod()
        return module

    own = torch.nn.Parameter(torch.randn(16, 8), requires_grad=False)
    shared = torch.nn.Parameter(torch.randn(12, 8), requires_grad=False)
    model = torch.nn.ModuleDict({"own": layer(own), "tied": layer(shared),
                                 "embed": torch.nn.Embedding(12, 8)})
    model["embed"].weight = shared
    x = torch.randn(5, 8)
    expected = {"own": x @ own.t(), "tied": x @ shared.t()}
    assert pack_model(model) == 2
    for name in ("own", "tied"):
        module = model[name]
        assert type(module.quant_method) is PackedLinearMethod
        torch.testing.assert_close(module.quant_method.apply(module, x), expected[name])
    assert model["own"].weight.numel() == 0  # the packed copy replaced it
    assert model["tied"].weight is shared  # still read by the embedding


def test_bfloat16_packs_natively_or_widened():
    """oneDNN's bfloat16 reorder raises on an AVX2-only CPU: there the weight is
    packed as float32, and the layer still takes and returns bfloat16."""
    from vllm_cpu_sim.linear import pack_weight, packed_linear, supported

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 24, generator=gen).bfloat16()
    bias = torch.randn(40, generator=gen).bfloat16()
    x = torch.randn(9, 24, generator=gen).bfloat16()
    packed = pack_weight(weight)
    assert packed.dtype == (torch.bfloat16 if supported(torch.bfloat16) else torch.float32)
    out = packed_linear(x, packed, 40, bias)
    assert out.dtype == torch.bfloat16
    expected = x.double() @ weight.double().t() + bias.double()
    # float32 accumulation: within one bfloat16 rounding of the exact product
    torch.testing.assert_close(out.double(), expected, atol=0.05, rtol=0.01)


# ---------------------------------------------------------------- communicator

def _collectives(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from vllm_cpu_sim.communicator import CpuSimCommunicator

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    group = dist.new_group([0, 1], backend="gloo")
    comm = CpuSimCommunicator(group, torch.device("cpu"), group, unique_name="tp:0")
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4) + 100 * rank
    results[rank] = {
        "all_reduce": comm.all_reduce(x.clone()),
        "all_gather": comm.all_gather(x, dim=-1),
        "reduce_scatter": comm.reduce_scatter(x[:, :4], dim=-1),
        "all_gatherv": comm.all_gatherv(x[: rank + 1], dim=0, sizes=[1, 2]),
    }
    dist.destroy_process_group()


def test_gloo_collectives_match_math():
    ctx = torch.multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        port = free_port()
        procs = [ctx.Process(target=_collectives, args=(r, port, results)) for r in (0, 1)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        results = dict(results)
    xs = [torch.arange(12, dtype=torch.float32).reshape(3, 4) + 100 * r for r in (0, 1)]
    for rank in (0, 1):
        got = results[rank]
        torch.testing.assert_close(got["all_reduce"], xs[0] + xs[1])
        torch.testing.assert_close(got["all_gather"], torch.cat(xs, dim=-1))
        total = xs[0] + xs[1]
        torch.testing.assert_close(got["reduce_scatter"], total[:, 2 * rank: 2 * rank + 2])
        torch.testing.assert_close(got["all_gatherv"], torch.cat([xs[0][:1], xs[1][:2]]))



def test_pass_manager_runs_without_vllm_kernels():
    """vLLM's post-grad passes fail on the empty build (their last pass looks up
    `_C` kernels); the plugin's run them all and keep the graph's result."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from vllm.compilation.passes.inductor_pass import pass_context
    from vllm.compilation.passes.pass_manager import PostGradPassManager
    from vllm.config import VllmConfig
    from vllm.config.utils import Range

    from vllm_cpu_sim.passes import CpuSimPassManager

    def step(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.silu(x @ w)
        return y.reshape(y.shape) + x

    x, w = torch.randn(4, 8), torch.randn(8, 8)
    config = VllmConfig()
    with pass_context(Range(1, 8)):
        vllm_passes = PostGradPassManager()
        vllm_passes.configure(config)
        with pytest.raises(AttributeError, match="rotary_embedding"):
            vllm_passes(make_fx(step)(x, w).graph)

        passes = CpuSimPassManager()
        passes.configure(config)
        module = make_fx(step)(x, w)
        passes(module.graph)
        module.recompile()
        torch.testing.assert_close(module(x, w), step(x, w))
        assert passes.uuid() != vllm_passes.uuid()  # part of Inductor's cache key
