"""Engine behaviour: prefix caching, chunked prefill and preemption keep outputs unchanged."""

from __future__ import annotations

import pytest
from conftest import make_llm
from vllm import SamplingParams

pytestmark = pytest.mark.slow

STORY = (
    "The lighthouse keeper had kept the lamp burning for forty years. Every night he "
    "climbed the spiral stairs, trimmed the wick, polished the great lens and watched "
    "the ships pass far out on the dark water. The village below had grown, the "
    "fishing boats had become ferries, and the children he once chased from the rocks "
    "now brought their own children to see the light. "
)
GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)


def _counter(llm, name: str) -> float:
    return sum(getattr(m, "value", 0) for m in llm.get_metrics() if m.name == name)


@pytest.mark.xdist_group("fp32")
def test_prefix_cache_hit_keeps_output(llm_fp32):
    prompt = STORY + "One stormy evening,"
    hits_before = _counter(llm_fp32, "vllm:prefix_cache_hits")
    first = llm_fp32.generate([prompt], GREEDY)[0]
    second = llm_fp32.generate([prompt], GREEDY)[0]
    assert second.num_cached_tokens >= 16 * (len(second.prompt_token_ids) // 16 - 1)
    assert _counter(llm_fp32, "vllm:prefix_cache_hits") - hits_before >= second.num_cached_tokens
    assert list(second.outputs[0].token_ids) == list(first.outputs[0].token_ids)
    # a different ending shares the prefix blocks and still hits the cache
    other = llm_fp32.generate([STORY + "On the first morning of spring,"], GREEDY)[0]
    assert other.num_cached_tokens >= 64


@pytest.fixture(scope="module")
def llm_tight(engines, model_dir):
    """Chunked prefill of 64 tokens a step and room for about 40 blocks of 16 tokens."""
    return engines.get("tight", lambda: make_llm(
        model_dir, dtype="float32", max_model_len=256, max_num_batched_tokens=64,
        max_num_seqs=16, disable_log_stats=False, enable_prefix_caching=False,
        additional_config={"cpu_sim": {"device_memory": "600MiB"}},
    ))


@pytest.mark.xdist_group("fp32")
def test_chunked_prefill_and_preemption_keep_outputs(llm_fp32, llm_tight):
    prompts = [f"{STORY} Chapter {i}: the keeper" for i in range(8)]
    expected = [list(o.outputs[0].token_ids) for o in llm_fp32.generate(prompts, GREEDY)]
    blocks = llm_tight.llm_engine.vllm_config.cache_config.num_gpu_blocks
    needed = sum(-(-(len(o.prompt_token_ids) + 40) // 16) for o in llm_fp32.generate(
        prompts, SamplingParams(max_tokens=1)))
    assert needed > blocks, "the batch must not fit the KV cache, or nothing is preempted"
    assert all(len(p) > 64 for p in prompts)  # every prompt needs more than one chunk
    preempted_before = _counter(llm_tight, "vllm:num_preemptions")
    got = [list(o.outputs[0].token_ids) for o in llm_tight.generate(prompts, GREEDY)]
    assert _counter(llm_tight, "vllm:num_preemptions") > preempted_before
    assert got == expected


@pytest.mark.xdist_group("fp32")
def test_kv_blocks_follow_device_memory(llm_tight, hf_model):
    """The simulated capacity and the model decide the KV cache size, by formula."""
    from vllm_cpu_sim.worker import activation_reserve

    config = llm_tight.llm_engine.vllm_config
    _, model = hf_model
    (weights,) = llm_tight.collective_rpc("_weights_bytes")
    # the worker counts what the model holds: transformers' parameters, plus
    # vLLM's rotary cos/sin table
    hf_bytes = sum(p.numel() * 4 for p in model.parameters())  # fp32, tied once
    assert hf_bytes <= weights <= hf_bytes * 1.01
    budget = int((600 << 20) * config.cache_config.gpu_memory_utilization)
    kv_bytes = budget - weights - activation_reserve(config)
    hf = model.config
    per_block = hf.num_hidden_layers * 16 * hf.num_key_value_heads * 2 * 64 * 4
    assert config.cache_config.num_gpu_blocks == kv_bytes // per_block
