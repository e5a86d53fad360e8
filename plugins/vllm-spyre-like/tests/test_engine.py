"""The engine on the default model in float32 with one warmup shape (64, 20, 4),
its graphs compiled by Inductor: greedy output equals transformers' for prompts
of several lengths batched together (padded to the shape), nothing is compiled
after warmup, and a request no shape fits is refused while the engine keeps
serving."""

from __future__ import annotations

import pytest
from conftest import SHAPES, compile_stats, hf_greedy

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("engine")]

#: From 2 to about 60 tokens, so one batch mixes short and long prompts.
PROMPTS = [
    "Hi",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village at the foot of the mountains, there lived an "
    "old clockmaker who repaired every clock in the valley. One winter morning a stranger "
    "knocked on his door carrying",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
    "Water boils at a temperature of",
]
MAX_TOKENS = 20


@pytest.fixture(scope="module")
def llm(model_dir):
    """Shut down at the end of the module, so the server test never runs beside it."""
    from vllm import LLM

    from vllm_harness.fixtures import shutdown

    engine = LLM(model=model_dir, dtype="float32", max_model_len=256,
                 enable_prefix_caching=False,
                 additional_config={"spyre_like": {"warmup_shapes": SHAPES,
                                                   "compile_backend": "inductor"}})
    yield engine
    shutdown(engine)


def test_greedy_equals_transformers_in_static_batches(llm, hf_model):
    from vllm import SamplingParams

    tokenizer, _ = hf_model
    lengths = [len(tokenizer(p).input_ids) for p in PROMPTS]
    assert min(lengths) <= 2 and 40 <= max(lengths) <= 64, lengths
    # 6 prompts with batch size 4: two static batches
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0,
                                                ignore_eos=True))
    got = [list(o.outputs[0].token_ids) for o in outs]
    want = [hf_greedy(hf_model, p, MAX_TOKENS) for p in PROMPTS]
    diff = [(p, g, w) for p, g, w in zip(PROMPTS, got, want) if g != w]
    assert not diff, f"{len(diff)}/{len(PROMPTS)} prompts differ: {diff[:2]}"
    # and shorter max_tokens within the shape
    short = llm.generate(PROMPTS[:3], SamplingParams(max_tokens=5, temperature=0,
                                                     ignore_eos=True))
    assert [list(o.outputs[0].token_ids) for o in short] == [w[:5] for w in want[:3]]


@pytest.mark.parametrize(("prompt_tokens", "max_tokens"), [(65, 5), (10, 21)])
def test_unfittable_request_is_refused_and_engine_keeps_serving(llm, prompt_tokens,
                                                                 max_tokens):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    with pytest.raises(ValueError, match=r"does not fit any warmup shape.*"
                       r"\(prompt_len=64, new_tokens=20, batch_size=4\)"):
        llm.generate(TokensPrompt(prompt_token_ids=[1] * prompt_tokens),
                     SamplingParams(max_tokens=max_tokens))
    (out,) = llm.generate("Hello", SamplingParams(max_tokens=3, temperature=0))
    assert len(out.outputs[0].token_ids) >= 1


def test_structured_output_is_refused_before_the_engine_core(llm):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    params = SamplingParams(max_tokens=3, structured_outputs=StructuredOutputsParams(
        choice=["yes", "no"]))
    with pytest.raises(ValueError, match="does not run structured outputs"):
        llm.generate("Hello", params)
    (out,) = llm.generate("Hello", SamplingParams(max_tokens=3, temperature=0))
    assert len(out.outputs[0].token_ids) >= 1


def test_scheduler_and_shapes_in_the_engine(llm):
    config = llm.llm_engine.vllm_config
    assert config.scheduler_config.scheduler_cls == \
        "vllm_spyre_like.scheduler.StaticBatchingScheduler"
    assert config.scheduler_config.max_num_seqs == 4


def test_every_shape_compiled_at_warmup_and_nothing_after(llm):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    stats = compile_stats(llm)
    # shape (64, 20, 4): prefill padded to 4 x 64 tokens, decode to 4 requests
    assert stats["backend"] == "inductor"
    assert stats["prefill_sizes"] == [256] and stats["decode_sizes"] == [4]
    assert sorted(int(n) for n in stats["warmup_seconds"]) == [4, 256]
    assert stats["compilations"] == 2
    # batches of 1 to 4 requests, prompts of 1 to 64 tokens, 1 to 20 new tokens
    for count, prompt_tokens, max_tokens in [(1, 1, 1), (3, 64, 20), (4, 17, 2), (2, 40, 9)]:
        llm.generate([TokensPrompt(prompt_token_ids=[5 + i] * prompt_tokens)
                      for i in range(count)],
                     SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    after = compile_stats(llm)
    assert after["compilations"] == stats["compilations"], "recompiled while serving"
    assert after["unplanned_steps"] == 0
