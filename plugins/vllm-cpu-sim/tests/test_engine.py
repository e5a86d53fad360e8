"""What only this plugin decides about its engine: the KV cache size from the
simulated memory, and the layers the served model is built from.

Engine behaviour every platform shares (prefix caching, chunked prefill,
preemption, ...) is judged by the vllm-harness conformance suite.
"""

from __future__ import annotations

import pytest
from conftest import make_llm

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tight")]


@pytest.fixture(scope="module")
def llm_tight(engines, model_dir):
    """Room for about 40 blocks of 16 tokens."""
    return engines.get("tight", lambda: make_llm(
        model_dir, dtype="float32", max_model_len=256, max_num_batched_tokens=64,
        max_num_seqs=16, enable_prefix_caching=False,
        additional_config={"cpu_sim": {"device_memory": "720MiB"}},
    ))


def test_kv_blocks_follow_device_memory(llm_tight, hf_model):
    """The simulated capacity and the model decide the KV cache size, by formula."""
    from vllm_plugin_kit.worker import activation_reserve

    config = llm_tight.llm_engine.vllm_config
    _, model = hf_model
    (weights,) = llm_tight.collective_rpc("weights_bytes")
    # the worker counts what the model holds: transformers' parameters, plus
    # vLLM's rotary cos/sin table, plus the LM head's packed copy when the
    # head is tied to the embedding (whose lookups still read the original)
    hf_bytes = sum(p.numel() * 4 for p in model.parameters())  # fp32, tied once
    assert model.config.tie_word_embeddings
    hf_bytes += model.get_output_embeddings().weight.numel() * 4
    assert hf_bytes <= weights <= hf_bytes * 1.01
    budget = int((720 << 20) * config.cache_config.gpu_memory_utilization)
    kv_bytes = budget - weights - activation_reserve(config)
    hf = model.config
    per_block = hf.num_hidden_layers * 16 * hf.num_key_value_heads * 2 * 64 * 4
    assert config.cache_config.num_gpu_blocks == kv_bytes // per_block


def test_served_model_uses_the_plugin_layers(llm_tight):
    """The engine's model holds this plugin's RMSNorm and attention, dispatched to
    the plugin's forms when the model runs eagerly (compiled, Inductor fuses
    vLLM's native RMSNorm instead)."""

    def layer_types(worker) -> list[str]:
        model = worker.model_runner.get_model()
        names = {type(m).__name__ for m in model.modules()}
        impls = {type(m.impl).__name__ for m in model.modules() if hasattr(m, "impl")}
        impls |= {type(m.quant_method).__name__ for m in model.modules()
                  if hasattr(m, "quant_method")}
        norms = {m._forward_method.__name__ for m in model.modules()
                 if type(m).__name__.endswith("RMSNorm")}
        return sorted(names | impls | {f"RMSNorm.{n}" for n in norms})

    (types,) = llm_tight.collective_rpc(layer_types)
    assert "CpuSimRMSNorm" in types and "CpuSimAttentionImpl" in types
    # every linear layer and the LM head run on oneDNN-packed weights; the
    # embedding keeps vLLM's method for its lookups
    assert "PackedLinearMethod" in types and "PackedLMHeadMethod" in types
    assert "UnquantizedLinearMethod" not in types
    assert "RMSNorm" not in types
    assert [t for t in types if t.startswith("RMSNorm.")] == ["RMSNorm.forward_oot"]

