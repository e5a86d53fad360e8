"""The whole plugin emulated: vLLM's engine on the default model, every NPU op
through its reference, against transformers."""

from __future__ import annotations

import pytest
from conftest import hf_greedy, make_llm

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("engine")]

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Write a short story about a lighthouse keeper who finds a message in a bottle. "
    "The story should be happy and mention the sea, the wind and an old friend. " * 3,
]


@pytest.fixture(scope="module")
def llm(engines, model_dir):
    # 64 batched tokens: the long prompt is prefilled in chunks beside the
    # others' decodes, so every attention state occurs
    return engines.get("ascend-fp32", lambda: make_llm(
        model_dir, dtype="float32", max_num_batched_tokens=64, max_num_seqs=4,
        enable_prefix_caching=True))


def _state_counts(worker) -> dict[str, int]:
    from vllm_ascend import attention

    return dict(attention.states_seen)


def _launches(worker) -> dict[str, int]:
    from vllm_ascend import npu_ops

    return dict(npu_ops.launches)


def test_greedy_equals_transformers(llm, hf_model):
    from vllm import SamplingParams

    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        assert list(out.outputs[0].token_ids) == hf_greedy(hf_model, prompt, 12), prompt
    # a prefix-cache hit: the same long prompt again, its blocks cached
    (again,) = llm.generate(PROMPTS[2:], SamplingParams(temperature=0, max_tokens=4),
                            use_tqdm=False)
    assert list(again.outputs[0].token_ids) == hf_greedy(hf_model, PROMPTS[2], 4)
    (states,) = llm.collective_rpc(_state_counts)
    assert set(states) == {"PREFILL_NO_CACHE", "PREFILL_CACHE_HIT", "DECODE_ONLY",
                           "CHUNKED_PREFILL"}, states


def _replays(worker) -> list[list[int]]:
    from vllm_ascend import acl_graph

    return sorted([size, count] for size, count in acl_graph.replayed.items())


def test_decode_steps_replay_acl_graphs(llm, hf_model):
    """Decode steps of three requests replay the ACL graph of four, one request
    padded, the attention's lengths and block table updated before each replay;
    the tokens are transformers'."""
    from vllm import SamplingParams

    prompts = [*PROMPTS[:2], "One, two, three,"]
    (before,) = llm.collective_rpc(_replays)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                        use_tqdm=False)
    (after,) = llm.collective_rpc(_replays)
    replays = {size: count - dict(before).get(size, 0) for size, count in after}
    # seven decode steps each (however the scheduler spreads the prefills), three
    # requests at a time through the graph of four
    assert replays.get(4, 0) >= 1 and sum(replays.values()) >= 6, replays
    for prompt, out in zip(prompts, outs):
        assert list(out.outputs[0].token_ids) == hf_greedy(hf_model, prompt, 8), prompt


def test_a_second_engine_in_the_process_leaves_the_first_its_graphs(llm, engines,
                                                                   tiny_model_dir, hf_model):
    """vLLM's graph-memory profile of a second engine (two ``LLM`` objects in one
    process) clears every graph wrapper's graphs; the first engine's decode steps
    must still replay its own graphs, not capture outside capture time."""
    from vllm import SamplingParams

    engines.get("ascend-tiny-fp32", lambda: make_llm(tiny_model_dir, dtype="float32",
                                                     max_num_seqs=2))
    prompts = [*PROMPTS[:2], "One, two, three,"]
    (before,) = llm.collective_rpc(_replays)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                        use_tqdm=False)
    (after,) = llm.collective_rpc(_replays)
    assert sum(count for _, count in after) - sum(count for _, count in before) >= 4
    for prompt, out in zip(prompts, outs):
        assert list(out.outputs[0].token_ids) == hf_greedy(hf_model, prompt, 6), prompt


def test_npu_ops_per_layer_and_step(llm):
    """Each decoder layer launches the same six NPU ops on every step, eager or
    replayed from an ACL graph: two norms (fused with the residual add), RoPE,
    the cache write, attention (its out= form, into vLLM's buffer), SwiGLU; the
    model's final norm is one more."""
    from vllm import SamplingParams

    config = llm.llm_engine.vllm_config.model_config.hf_config
    (before,) = llm.collective_rpc(_launches)
    llm.generate(["One, two, three,"], SamplingParams(temperature=0, max_tokens=9,
                                                      ignore_eos=True), use_tqdm=False)
    (after,) = llm.collective_rpc(_launches)
    steps, layers = 9, config.num_hidden_layers  # one prefill step, eight decodes
    per_layer = {op: (after.get(op, 0) - before.get(op, 0)) / steps for op in after}
    assert per_layer["npu_fused_infer_attention_score.out"] == layers
    for op in ("npu_mrope", "npu_scatter_pa_kv_cache", "npu_swiglu"):
        assert per_layer[op] == layers, op
    # the first layer's input norm has no residual yet; every later norm, and
    # the model's final one, adds the residual in the same kernel
    assert per_layer["npu_rms_norm"] == 1
    assert per_layer["npu_add_rms_norm"] == 2 * layers
    assert sum(per_layer.values()) == 6 * layers + 1


def _start_up(wrapper) -> dict:
    from vllm_ascend.emulated import runtime

    worker = getattr(wrapper, "worker", wrapper)
    device = runtime.device_of(worker)
    kv_bytes = sum(cache.untyped_storage().nbytes()
                   for cache in {c.data_ptr(): c for c in worker.model_runner.kv_caches}.values())
    return {"worker": type(worker).__qualname__, "module": type(worker).__module__,
            "runner": type(worker.model_runner).__qualname__,
            "bases": [c.__module__ + "." + c.__qualname__
                      for c in type(worker.model_runner).__mro__],
            "peak": device.peak, "budget": worker.requested_memory,
            "capacity": device.capacity, "kv": kv_bytes}


def test_the_engine_runs_the_npu_worker_and_runner_within_the_devices_memory(llm):
    """The classes an NPU runs, vLLM's GPU worker and runner under them; from the
    memory profile on (the KV cache, the graphs' capture, the warm-up) the
    emulated device's peak stays within vLLM's budget of it."""
    (seen,) = llm.collective_rpc(_start_up)
    assert (seen["module"], seen["worker"], seen["runner"]) == (
        "vllm_ascend.worker", "NPUWorker", "NPUModelRunner"), seen
    assert "vllm.v1.worker.gpu_model_runner.GPUModelRunner" in seen["bases"]
    assert not [base for base in seen["bases"] if "cpu" in base.lower()], seen["bases"]
    assert seen["capacity"] == 1536 << 20  # make_llm's device_memory
    assert seen["budget"] < seen["capacity"]  # --gpu-memory-utilization of it
    assert seen["kv"] > 0.5 * seen["budget"], seen  # the KV cache takes most of it
    assert seen["peak"] <= seen["budget"], (
        f"{seen['peak'] / 2**30:.3f} GiB at peak on a device whose budget is "
        f"{seen['budget'] / 2**30:.3f} GiB")
