"""Speculative decoding: drafts change how many tokens a step yields, never which.

The n-gram proposer drafts from the request's own text, so the prompts repeat
themselves and drafts get accepted; greedy ids are held to transformers (what
speculation off gives, by ``correctness.greedy_fp32``), with a sampled request
in the same batch so both of the rejection sampler's paths run in one step.
"""

from __future__ import annotations

from typing import Any

import pytest

from vllm_harness.declaration import Profile
from vllm_harness.fixtures import Engines, make_llm, reference_greedy

pytestmark = pytest.mark.xdist_group("spec_decode")

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2,
         "prompt_lookup_max": 3}
REPEATING = ["1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3,",
             "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef"]
TOKENS = 24


def _accepted(llm: Any) -> float:
    return sum(getattr(m, "value", 0) for m in llm.get_metrics()
               if m.name == "vllm:spec_decode_num_accepted_tokens")


@pytest.fixture(scope="module")
def ngram_llm(engines: Engines, profile: Profile, model_dir: str) -> Any:
    return engines.get("ngram", lambda: make_llm(
        profile, model_dir, dtype="float32", speculative_config=NGRAM))


@pytest.mark.feature("spec_decode.ngram")
def test_ngram_drafts_keep_the_greedy_ids(ngram_llm: Any, model_dir: str,
                                          request: pytest.FixtureRequest):
    from vllm import SamplingParams

    want = reference_greedy(model_dir, lambda: request.getfixturevalue("hf_model"),
                            REPEATING, TOKENS)
    greedy = SamplingParams(temperature=0, max_tokens=TOKENS, ignore_eos=True)
    sampled = SamplingParams(temperature=1.0, seed=4, max_tokens=TOKENS, ignore_eos=True)
    before = _accepted(ngram_llm)
    outs = ngram_llm.generate([*REPEATING, REPEATING[0]], [greedy, greedy, sampled],
                              use_tqdm=False)
    for prompt, out, ref in zip(REPEATING, outs, want, strict=False):
        assert list(out.outputs[0].token_ids) == ref, (
            f"{prompt!r}: {list(out.outputs[0].token_ids)} against transformers' {ref}")
    assert len(outs[2].outputs[0].token_ids) == TOKENS, "the sampled request stopped early"
    assert _accepted(ngram_llm) > before, "no draft token was accepted"
