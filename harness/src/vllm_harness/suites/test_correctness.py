"""Correctness against Hugging Face transformers on the default model (and, for
a checkpoint the plugin writes from it, against that model)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from vllm_harness.agreement import MIN_AGREEMENT, llm_top1_agreement, teacher_forced_agreement
from vllm_harness.declaration import Profile
from vllm_harness.fixtures import MAX_TOKENS, PROMPTS, Server, make_llm, shutdown

LOGPROB_TOLERANCE = 2e-3
#: Teacher-forced top-1 agreement of a checkpoint the plugin writes (``[engine]
#: model_from``) with the fp32 model it was written from. A lossy form moves
#: near-ties (int8 weights with per-token int8 activations keep 0.92 of the
#: default model's positions, per-tensor ones from a min/max calibration 0.67);
#: a wrong kernel lands far below.
MIN_DERIVED_AGREEMENT = 0.8


def _first_difference(got: list[int], ref: list[int]) -> str:
    pos = next((i for i, (a, b) in enumerate(zip(got, ref, strict=False)) if a != b),
               min(len(got), len(ref)))
    return (f"first difference at token {pos}: got {got[pos:pos + 4]}, "
            f"transformers {ref[pos:pos + 4]}")


@pytest.mark.xdist_group("engine")
@pytest.mark.feature("correctness.greedy_fp32")
def test_greedy_fp32_equals_transformers(llm: Any, hf_greedy: list[list[int]]):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate(PROMPTS, params)
    wrong = []
    for prompt, out, ref in zip(PROMPTS, outputs, hf_greedy, strict=True):
        got = list(out.outputs[0].token_ids)
        if got != ref:
            wrong.append(f"{prompt!r}: {_first_difference(got, ref)}")
    assert not wrong, f"{len(wrong)}/{len(PROMPTS)} prompts differ:\n" + "\n".join(wrong)


@pytest.mark.xdist_group("engine")
@pytest.mark.feature("correctness.logprobs")
def test_logprobs_close_to_transformers(llm: Any, hf_model: tuple[Any, Any]):
    import torch
    from vllm import SamplingParams

    _, model = hf_model
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=3,
                            prompt_logprobs=2)
    worst = 0.0
    for o in llm.generate(PROMPTS[:3], params):
        ids = list(o.prompt_token_ids) + list(o.outputs[0].token_ids)
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        n_prompt = len(o.prompt_token_ids)
        assert o.prompt_logprobs[0] is None, "the first prompt token has no logprob"
        checks = []
        for step, lp in enumerate(o.outputs[0].logprobs):  # position t predicts t + 1
            assert len(lp) >= 3, f"asked for 3 logprobs, got {len(lp)}"
            checks += [(entry.logprob, float(ref[n_prompt + step - 1, token]))
                       for token, entry in lp.items()]
        for pos, lp in enumerate(o.prompt_logprobs[1:], start=1):
            assert ids[pos] in lp, "prompt logprobs miss the prompt token"
            checks += [(entry.logprob, float(ref[pos - 1, token])) for token, entry in lp.items()]
        for got, want in checks:
            worst = max(worst, abs(got - want))
            assert math.isclose(got, want, abs_tol=LOGPROB_TOLERANCE), (
                f"logprob {got:.5f}, transformers {want:.5f} "
                f"(tolerance {LOGPROB_TOLERANCE})")
    print(f"largest logprob difference: {worst:.2e}")


def _server_agreement(server: Server, tokenizer: Any, hf_greedy: list[list[int]]) -> float:
    import requests

    prompts = [tokenizer(p).input_ids + ref for p, ref in zip(PROMPTS, hf_greedy, strict=True)]
    logprobs = []
    for ids in prompts:
        r = requests.post(f"{server.api}/completions", timeout=60, json={
            "model": "harness-model", "prompt": ids, "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": 1})
        assert r.status_code == 200, r.text
        lps = r.json()["choices"][0]["prompt_logprobs"]
        logprobs.append([{int(t): e["logprob"] for t, e in (lp or {}).items()} for lp in lps])
    return teacher_forced_agreement(logprobs, prompts, hf_greedy)


@pytest.mark.xdist_group("server")
@pytest.mark.feature("correctness.bf16")
def test_bf16_top1_agrees_with_fp32(profile: Profile, server: Server, model_dir: str,
                                    hf_tokenizer: Any, hf_greedy: list[list[int]]):
    if server.dtype == "bfloat16":  # the server already runs it: ask it
        rate = _server_agreement(server, hf_tokenizer, hf_greedy)
    else:
        rate = _engine_agreement(profile, model_dir, "bfloat16", hf_tokenizer, hf_greedy)
    assert rate >= MIN_AGREEMENT, f"bfloat16 top-1 agreement {rate:.3f} < {MIN_AGREEMENT}"


def _engine_agreement(profile: Profile, model_dir: str, dtype: str,
                      tokenizer: Any, hf_greedy: list[list[int]]) -> float:
    """Agreement of an offline engine in ``dtype``; an unsupported dtype is refused
    when the engine is built."""
    llm = make_llm(profile, model_dir, dtype=dtype)
    try:
        return llm_top1_agreement(llm, tokenizer, hf_greedy)
    finally:
        shutdown(llm)


@pytest.mark.xdist_group("engine")
@pytest.mark.feature("correctness.fp16")
def test_fp16_top1_agrees_with_fp32(profile: Profile, model_dir: str, hf_tokenizer: Any,
                                    hf_greedy: list[list[int]]):
    rate = _engine_agreement(profile, model_dir, "float16", hf_tokenizer, hf_greedy)
    assert rate >= MIN_AGREEMENT, f"float16 top-1 agreement {rate:.3f} < {MIN_AGREEMENT}"


@pytest.mark.xdist_group("engine")
@pytest.mark.derived_checkpoint
@pytest.mark.feature("correctness.derived")
def test_derived_checkpoint_agrees_with_its_source(llm: Any, hf_tokenizer: Any,
                                                   source_hf_greedy: list[list[int]]):
    """Runs only on profiles with ``[engine] model_from``."""
    rate = llm_top1_agreement(llm, hf_tokenizer, source_hf_greedy)
    assert rate >= MIN_DERIVED_AGREEMENT, (
        f"top-1 agreement with the source model {rate:.3f} < {MIN_DERIVED_AGREEMENT}")
