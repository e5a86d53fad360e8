"""The default, compiled model: vLLM's piecewise compilation, by Inductor, at start.

The conformance suite runs this plugin eagerly (its many engines could not
each pay for a compile), so the compiled path is held to transformers' tokens
here, alone and batched, and to one graph for every step; its bfloat16 model
to the suite's bfloat16 criterion (Inductor rounds intermediates where the
eager model does).
"""

from __future__ import annotations

import pytest
from conftest import make_llm

from vllm_harness.agreement import MIN_AGREEMENT, llm_top1_agreement
from vllm_harness.fixtures import MAX_TOKENS, PROMPTS

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("compiled")]


def compiled_llm(engines, model_dir: str, dtype: str):
    return engines.get(f"compiled-{dtype}", lambda: make_llm(
        model_dir, dtype=dtype, enforce_eager=False, max_num_seqs=8,
        max_num_batched_tokens=256,
    ))


@pytest.fixture(scope="module")
def llm_compiled(engines, model_dir):
    return compiled_llm(engines, model_dir, "float32")


def compile_state(worker) -> dict:
    import torch._dynamo.utils
    from vllm.compilation.counter import compilation_counter as counter

    return {"mode": int(worker.vllm_config.compilation_config.mode),
            "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"],
            "pieces": counter.num_piecewise_capturable_graphs_seen,
            "artifacts": counter.num_compiled_artifacts_saved
            + counter.num_compiled_artifacts_loaded,
            "layers": worker.model_config.hf_text_config.num_hidden_layers,
            "packed": sum(type(m.quant_method).__name__ == "PackedLinearMethod"
                          for m in worker.model_runner.get_model().modules()
                          if hasattr(m, "quant_method"))}


def greedy(llm, prompts: list[str]) -> list[list[int]]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [list(o.outputs[0].token_ids)
            for o in llm.generate(prompts, params, use_tqdm=False)]


def test_compiled_at_start_with_packed_layers(llm_compiled):
    from vllm.config import CompilationMode

    (state,) = llm_compiled.collective_rpc(compile_state)
    assert state["mode"] == CompilationMode.VLLM_COMPILE
    assert state["graphs"] == 1, "the model is traced once, at warm-up"
    # split at each attention: before the first, between layers, after the last
    assert state["pieces"] == state["layers"] + 1
    # the identical pieces between layers compile once (cold) or load once (warm)
    assert state["artifacts"] == 3
    assert state["packed"] > 0


def test_compiled_greedy_equals_transformers(llm_compiled, hf_greedy):
    assert greedy(llm_compiled, PROMPTS) == hf_greedy
    # decode steps of a single token take the same graph
    assert greedy(llm_compiled, PROMPTS[:1]) == hf_greedy[:1]
    assert greedy(llm_compiled, PROMPTS[3:6]) == hf_greedy[3:6]
    (state,) = llm_compiled.collective_rpc(compile_state)
    assert state["graphs"] == 1, "a batch size recompiled the model"


def test_compiled_bf16_top1_agrees_with_fp32(engines, model_dir, hf_tokenizer, hf_greedy):
    """Fed transformers' float32 continuation, the compiled bfloat16 model's top-1
    token agrees with it as often as the conformance suite asks of the eager one."""
    llm = compiled_llm(engines, model_dir, "bfloat16")
    rate = llm_top1_agreement(llm, hf_tokenizer, hf_greedy)
    assert rate >= MIN_AGREEMENT, f"bfloat16 top-1 agreement {rate:.3f} < {MIN_AGREEMENT}"
