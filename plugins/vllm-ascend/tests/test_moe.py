"""The MoE path emulated: vLLM's engine on the harness's "moe-random" model (a
small Qwen3-MoE of seeded random weights whose router picks 2 of 8 experts)
against transformers running the same weights, and the NPU ops each MoE layer
launches. (The conformance suite runs the "moe" model: the default model's
MLPs as 8 experts, all routed.)"""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import hf_greedy, make_llm

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("moe")]

PROMPTS = [
    "The capital of France is",
    "1, 2, 3, 4,",
    "Write a short story about a lighthouse keeper who finds a message in a bottle. " * 4,
]
MOE_OPS = ("npu_moe_gating_top_k_softmax_v2", "npu_moe_init_routing_v2",
           "npu_moe_token_unpermute")


@pytest.fixture(scope="module")
def moe_dir() -> str:
    from vllm_harness.models import prepare

    return str(prepare("moe-random", quiet=True))


@pytest.fixture(scope="module")
def hf_moe(moe_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32).eval()
    return AutoTokenizer.from_pretrained(moe_dir), model


@pytest.fixture(scope="module")
def llm(engines, moe_dir):
    # 32 batched tokens: the long prompt is prefilled in chunks beside the
    # others' decodes
    return engines.get("ascend-moe-fp32", lambda: make_llm(
        moe_dir, dtype="float32", max_num_batched_tokens=32, max_num_seqs=4))


def _launches(worker) -> dict[str, int]:
    from vllm_ascend import npu_ops

    return dict(npu_ops.launches)


def _moe_methods(worker) -> set[str]:
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    model = worker.model_runner.get_model()
    return {type(m.quant_method).__name__ for m in model.modules()
            if isinstance(m, RoutedExperts)}


def test_greedy_equals_transformers(llm, hf_moe):
    from vllm import SamplingParams

    (methods,) = llm.collective_rpc(_moe_methods)
    assert methods == {"AscendFusedMoEMethod"}
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
                        use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        assert list(out.outputs[0].token_ids) == hf_greedy(hf_moe, prompt, 16), prompt[:40]


def test_npu_ops_per_moe_layer_and_step(llm):
    """Every MoE layer runs the six MoE ops once a step: gating, routing, the
    two grouped matmuls around SwiGLU, and the weighted unpermute."""
    from vllm import SamplingParams

    layers = llm.llm_engine.vllm_config.model_config.hf_config.num_hidden_layers
    (before,) = llm.collective_rpc(_launches)
    llm.generate(["One, two, three,"], SamplingParams(temperature=0, max_tokens=9,
                                                      ignore_eos=True), use_tqdm=False)
    (after,) = llm.collective_rpc(_launches)
    steps = 9  # one prefill step, eight decodes
    per_step = {op: (after.get(op, 0) - before.get(op, 0)) / steps for op in after}
    for op in (*MOE_OPS, "npu_swiglu"):
        assert per_step[op] == layers, op
    assert per_step["npu_grouped_matmul"] == 2 * layers


def _expert_ranges(worker) -> list[tuple[int, int]]:
    # a list: vLLM's client cannot decode a set of tuples in an RPC result
    # (its msgpack turns the tuples into lists) and the call never returns
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    model = worker.model_runner.get_model()
    return sorted({m.quant_method.expert_range for m in model.modules()
                   if isinstance(m, RoutedExperts)})


def test_expert_parallel_greedy_equals_transformers(engines, moe_dir, hf_moe):
    """Two ranks of four whole experts each (--enable-expert-parallel over
    tensor parallelism 2): the same tokens as transformers on the 8 experts."""
    from vllm import SamplingParams

    llm = engines.get("ascend-moe-ep2", lambda: make_llm(
        moe_dir, dtype="float32", tensor_parallel_size=2, enable_expert_parallel=True,
        distributed_executor_backend="mp", max_num_seqs=4))
    # every MoE layer of rank r holds experts [4r, 4r + 4)
    assert llm.collective_rpc(_expert_ranges) == [[(0, 4)], [(4, 8)]]
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
                        use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        assert list(out.outputs[0].token_ids) == hf_greedy(hf_moe, prompt, 16), prompt[:40]


def test_expert_parallelism_across_data_parallel_ranks(moe_dir, hf_moe, tmp_path):
    """``vllm serve --data-parallel-size 2 --enable-expert-parallel``: two
    engine cores, each a rank of four whole experts. Every MoE layer gathers
    both ranks' tokens, runs its experts on them and hands each rank the sums
    for its own tokens back (a rank without requests runs dummy steps to take
    part). Greedy tokens equal transformers'."""
    import requests

    from vllm_harness.fixtures import serving

    log = tmp_path / "serve.log"
    args = [moe_dir, "--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "4",
            "--data-parallel-size", "2", "--enable-expert-parallel",
            "--additional-config", json.dumps({"ascend": {"device_memory": "1536MiB"}})]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    with serving(args, log, env) as url:
        served = log.read_text()
        for experts in ("[0, 4) of 8", "[4, 8) of 8"):
            assert f"MoE layers hold experts {experts}" in served, experts
        body = {"model": moe_dir, "prompt": PROMPTS, "max_tokens": 16, "temperature": 0,
                "ignore_eos": True, "return_token_ids": True}
        choices = requests.post(f"{url}/v1/completions", json=body, timeout=300).json()["choices"]
    assert len(choices) == len(PROMPTS)
    for choice in choices:
        prompt = PROMPTS[choice["index"]]
        assert choice["token_ids"] == hf_greedy(hf_moe, prompt, 16), prompt[:40]


def test_an_all_to_all_backend_of_cuda_kernels_is_refused(moe_dir):
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(model=moe_dir, max_model_len=512, enable_expert_parallel=True,
                      data_parallel_size=2, all2all_backend="deepep_low_latency")
    with pytest.raises(ValueError, match="allgather_reducescatter"):
        args.create_engine_config()
