"""Teacher-forced top-1 agreement with the fp32 reference.

The correctness suite judges 16-bit dtypes with it; plugins' own tests use it
on engines the suites do not build (a quantized model, a compiled engine).
"""

from __future__ import annotations

from typing import Any

from vllm_harness.fixtures import PROMPTS

#: Teacher-forced top-1 agreement of a 16-bit dtype with fp32. SmolLM2 has a
#: few near-ties that flip under 16-bit rounding; 95% leaves room for them and
#: still catches a wrong kernel (which lands far below).
MIN_AGREEMENT = 0.95


def teacher_forced_agreement(prompt_logprobs: list[list[dict[int, float]]],
                             prompts: list[list[int]], refs: list[list[int]]) -> float:
    """Share of positions where the fp32 reference token is the engine's top-1.

    Each position holds the logprobs vLLM returned with ``prompt_logprobs=1``:
    the prompt token's and the engine's best. The reference token is top-1
    when its logprob is the best; an exact tie counts, since 16-bit logits tie
    often and vLLM ranks both tied tokens 2 (it counts the logprobs >= the
    token's), though either is the engine's first choice.
    """
    agree = total = 0
    for logprobs, ids, ref in zip(prompt_logprobs, prompts, refs, strict=True):
        for pos in range(len(ids) - len(ref), len(ids)):
            at = logprobs[pos]
            agree += at[ids[pos]] >= max(at.values())
            total += 1
    return agree / total


def llm_top1_agreement(llm: Any, tokenizer: Any, hf_greedy: list[list[int]]) -> float:
    """Teacher-forced top-1 agreement of a ``vllm.LLM`` with the fp32 reference
    (plugins' own tests use it on engines the suites do not build)."""
    from vllm import SamplingParams

    prompts = [tokenizer(p).input_ids + r for p, r in zip(PROMPTS, hf_greedy, strict=True)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1),
                        use_tqdm=False)
    logprobs = [[{t: e.logprob for t, e in (lp or {}).items()} for lp in o.prompt_logprobs]
                for o in outs]
    return teacher_forced_agreement(logprobs, prompts, hf_greedy)
