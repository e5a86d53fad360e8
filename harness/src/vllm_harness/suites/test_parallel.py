"""Tensor parallelism: two workers give transformers' greedy tokens, as one does
(correctness.greedy_fp32)."""

from __future__ import annotations

from typing import Any

import pytest

from vllm_harness.declaration import Profile
from vllm_harness.fixtures import MAX_TOKENS, PROMPTS, make_llm, shutdown

pytestmark = pytest.mark.xdist_group("parallel")


def _generate(profile: Profile, model: str, **kwargs: Any) -> list[list[int]]:
    from vllm import SamplingParams

    llm = make_llm(profile, model, dtype="float32", **kwargs)
    try:
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        return [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params)]
    finally:
        shutdown(llm)


@pytest.mark.feature("parallel.tp2")
def test_tp2_equals_transformers(profile: Profile, tp2_model_dir: str,
                                 tp2_hf_greedy: list[list[int]]):
    """On the default model cut to heads two ranks can split (see vllm_harness.models).

    Held to transformers' tokens, which one worker must give on the default model
    (correctness.greedy_fp32), rather than to a second engine of one worker: the
    reference is computed once per machine, an engine would start for each profile.
    """
    tp2 = _generate(profile, tp2_model_dir, tensor_parallel_size=2,
                    distributed_executor_backend="mp")
    differ = [i for i, (a, b) in enumerate(zip(tp2_hf_greedy, tp2, strict=True)) if a != b]
    assert not differ, f"tensor parallel 2 differs from transformers on prompts {differ}"
