"""Every SamplingParams field, on the fp32 engine, judged by what it must do to the output."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import PROMPTS
from vllm import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fp32")]

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def _repetition(ids: list[int]) -> int:
    return sum(n * n for n in Counter(ids).values())


def _ids(llm, params, prompts=(PROMPT,)):
    return [list(o.outputs[0].token_ids) for o in llm.generate(list(prompts), params)]


@pytest.fixture(scope="module")
def greedy(llm_fp32):
    return _ids(llm_fp32, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0]


def test_seed_reproduces_and_seeds_differ(llm_fp32):
    def run(seed):
        return _ids(llm_fp32, SamplingParams(temperature=1.0, seed=seed, max_tokens=24))[0]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_temperature_sampling_departs_from_greedy(llm_fp32, greedy):
    outs = [_ids(llm_fp32, SamplingParams(temperature=1.5, seed=s, max_tokens=32,
                                          ignore_eos=True))[0] for s in range(3)]
    assert any(o != greedy for o in outs)


@pytest.mark.parametrize("params", [
    {"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0},
], ids=["top_k=1", "top_p~0", "min_p=1"])
def test_truncation_to_one_token_is_greedy(llm_fp32, greedy, params):
    sp = SamplingParams(temperature=1.0, seed=3, max_tokens=32, ignore_eos=True, **params)
    assert _ids(llm_fp32, sp)[0] == greedy


def test_top_k_limits_choices(llm_fp32):
    sp = SamplingParams(temperature=2.0, top_k=3, seed=1, max_tokens=1, logprobs=20)
    out = llm_fp32.generate([PROMPT] * 1, sp)[0].outputs[0]
    token = out.token_ids[0]
    # logprobs are of the raw distribution; the sampled token is among its top 3
    assert out.logprobs[0][token].rank <= 3


@pytest.mark.parametrize("penalty", [
    {"repetition_penalty": 1.8}, {"frequency_penalty": 1.5}, {"presence_penalty": 1.5},
])
def test_penalties_make_output_less_repetitive(llm_fp32, penalty):
    base_params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    base = _ids(llm_fp32, base_params)[0]
    pen = _ids(llm_fp32, SamplingParams(temperature=0, max_tokens=60, ignore_eos=True,
                                        **penalty))[0]
    assert pen != base
    # sum of squared token counts: lower when tokens repeat less
    assert _repetition(pen) < _repetition(base)


def test_stop_string(llm_fp32, greedy, model_dir):
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(model_dir).decode(greedy)
    word = text.split()[3]
    out = llm_fp32.generate([PROMPT], SamplingParams(temperature=0, max_tokens=32,
                                                     ignore_eos=True, stop=[word]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == word
    assert word not in out.text and text.startswith(out.text)


def test_stop_token_id(llm_fp32, greedy):
    stop_id = greedy[5]
    first = greedy.index(stop_id)
    out = llm_fp32.generate([PROMPT], SamplingParams(
        temperature=0, max_tokens=32, ignore_eos=True, stop_token_ids=[stop_id]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    assert list(out.token_ids[:first]) == greedy[:first]
    assert len(out.token_ids) == first + 1  # the stop token itself is the last one


def test_min_tokens_and_ignore_eos(llm_fp32):
    chat = "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n"
    short = llm_fp32.generate([chat], SamplingParams(temperature=0, max_tokens=50))[0].outputs[0]
    assert short.finish_reason == "stop" and len(short.token_ids) < 20
    longer = llm_fp32.generate([chat], SamplingParams(temperature=0, max_tokens=50,
                                                      min_tokens=25))[0].outputs[0]
    assert len(longer.token_ids) >= 25
    full = llm_fp32.generate([chat], SamplingParams(temperature=0, max_tokens=50,
                                                    ignore_eos=True))[0].outputs[0]
    assert len(full.token_ids) == 50 and full.finish_reason == "length"


def test_logprobs_count_and_consistency(llm_fp32):
    out = llm_fp32.generate([PROMPT], SamplingParams(temperature=0, max_tokens=6,
                                                     logprobs=5))[0].outputs[0]
    assert len(out.logprobs) == len(out.token_ids)
    for token, lp in zip(out.token_ids, out.logprobs):
        assert token in lp and lp[token].rank == 1  # greedy picks the top token
        assert 5 <= len(lp) <= 6
        values = sorted((e.logprob for e in lp.values()), reverse=True)
        assert values[0] <= 0 and values == sorted(values, reverse=True)


def test_n_completions(llm_fp32):
    out = llm_fp32.generate([PROMPT], SamplingParams(n=3, temperature=1.0, seed=5,
                                                     max_tokens=16))[0]
    assert len(out.outputs) == 3
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1


def test_many_concurrent_requests_match_one_by_one(llm_fp32):
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = [f"{p} (variant {i})" for i in range(6) for p in PROMPTS]  # 48 requests
    batched = _ids(llm_fp32, params, prompts)
    single = [_ids(llm_fp32, params, [p])[0] for p in prompts[::8]]
    assert [batched[i] for i in range(0, len(prompts), 8)] == single
    assert all(len(b) == 16 for b in batched)
