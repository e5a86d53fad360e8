"""Continuous batching on the default model in float32: greedy output equals
transformers' while prefills of prompts of several lengths (padded to whole
64-token blocks) interleave with padded decode batches; nothing is compiled
after warmup; the limits are checked at startup with errors that say what to
change."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import compile_stats, hf_greedy

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("continuous")]

CONTINUOUS = {"spyre_like": {"mode": "continuous", "compile_backend": "eager"}}

#: 1 to about 100 tokens: prefills padded to 64 and to 128 tokens.
PROMPTS = [
    "Hi",
    "The capital of France is",
    "Once upon a time, in a small village at the foot of the mountains, there lived an "
    "old clockmaker who repaired every clock in the valley. One winter morning a stranger "
    "knocked on his door carrying a clock that had stopped at midnight a hundred years "
    "ago, and asked him to make it run again before the first snow. The clockmaker",
    "def fibonacci(n):",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
    "Water boils at a temperature of",
]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def llm(model_dir):
    from vllm import LLM

    from vllm_harness.fixtures import shutdown

    engine = LLM(model=model_dir, dtype="float32", max_model_len=256, max_num_seqs=4,
                 additional_config=CONTINUOUS)
    yield engine
    shutdown(engine)


def test_configuration(llm):
    config = llm.llm_engine.vllm_config
    assert config.cache_config.block_size == 64
    assert config.scheduler_config.scheduler_cls == \
        "vllm_spyre_like.scheduler.ContinuousBatchingScheduler"
    stats = compile_stats(llm)
    assert stats["prefill_sizes"] == [64, 128, 192, 256]
    assert stats["decode_sizes"] == [1, 2, 4]


def test_greedy_equals_transformers_with_interleaved_prefills(llm, hf_model):
    from vllm import SamplingParams

    tokenizer, _ = hf_model
    lengths = [len(tokenizer(p).input_ids) for p in PROMPTS]
    assert min(lengths) <= 2 and 64 < max(lengths) <= 128, lengths
    # 6 requests, 4 at a time: the last two prefill while the first ones decode
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0,
                                                ignore_eos=True))
    got = [list(o.outputs[0].token_ids) for o in outs]
    want = [hf_greedy(hf_model, p, MAX_TOKENS) for p in PROMPTS]
    diff = [(p, g, w) for p, g, w in zip(PROMPTS, got, want) if g != w]
    assert not diff, f"{len(diff)}/{len(PROMPTS)} prompts differ: {diff[:2]}"


def test_nothing_compiled_after_warmup(llm):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    stats = compile_stats(llm)
    assert stats["compilations"] == 7  # 4 prefill + 3 decode sizes
    for count, prompt_tokens, max_tokens in [(1, 1, 1), (3, 200, 30), (5, 65, 3), (2, 7, 12)]:
        llm.generate([TokensPrompt(prompt_token_ids=[5 + i] * prompt_tokens)
                      for i in range(count)],
                     SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    after = compile_stats(llm)
    assert after["compilations"] == stats["compilations"], "recompiled while serving"
    assert after["unplanned_steps"] == 0


@pytest.mark.parametrize(("args", "match"), [
    ({"max_model_len": 200}, r"max_model_len to be a multiple of 64.*--max-model-len 192"),
    ({"block_size": 16}, r"blocks of 64 tokens, not --block-size 16"),
    ({"max_num_batched_tokens": 128},
     r"max_num_batched_tokens=128 must be at least max_model_len=256"),
])
def test_bad_limits_are_refused_before_the_engine_starts(tiny_model_dir, args, match):
    from vllm import LLM

    settings = {"model": tiny_model_dir, "dtype": "float32", "max_model_len": 256,
                "additional_config": CONTINUOUS, **args}
    with pytest.raises(ValueError, match=match):
        LLM(**settings)


def test_kv_cache_too_small_for_the_limits_is_named_at_startup(tiny_model_dir):
    # 4 sequences of 256 tokens need 16 blocks of 64; 1 MiB holds about 5 for
    # this 2-layer model in float32.
    code = (
        "from vllm import LLM\n"
        "if __name__ == '__main__':\n"
        f"    LLM(model={tiny_model_dir!r}, dtype='float32', max_model_len=256,\n"
        "        max_num_seqs=4, kv_cache_memory_bytes=1 << 20,\n"
        f"        additional_config={CONTINUOUS!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300, check=False)
    assert proc.returncode != 0
    assert ("continuous batching: max_num_seqs=4 sequences of max_model_len=256 tokens "
            "need 16 KV blocks of 64 tokens, but the device memory holds") in proc.stderr, \
        proc.stderr[-3000:]
    assert "lower --max-num-seqs or --max-model-len" in proc.stderr
    # refused before any graph is compiled
    assert "warmup" not in proc.stderr.split("need 16 KV blocks")[0]
