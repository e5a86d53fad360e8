"""What a request may hand the engine instead of a text: here, prompt embeddings.

``prompt_embeds`` skip the embedding layer, so the engine must run every step
from embeddings; the reference is transformers' greedy decoding of the same
tokens, the embeddings taken from its own embedding table.
"""

from __future__ import annotations

from typing import Any

import pytest

from vllm_harness.declaration import Profile
from vllm_harness.fixtures import PROMPTS, Engines, make_llm

pytestmark = pytest.mark.xdist_group("inputs")


def _greedy(max_tokens: int) -> Any:
    from vllm import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def _ids(outputs: list[Any]) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


EMBEDS_TOKENS = 12


@pytest.fixture(scope="module")
def embeds_llm(engines: Engines, profile: Profile, model_dir: str) -> Any:
    """The float32 engine with ``enable_prompt_embeds``: every step then feeds the
    model embeddings, so it is an engine of its own."""
    return engines.get("prompt_embeds", lambda: make_llm(
        profile, model_dir, dtype="float32", enable_prompt_embeds=True))


@pytest.mark.feature("inputs.prompt_embeds")
def test_prompt_embeds_give_the_tokens_greedy_ids(embeds_llm: Any, hf_model: tuple[Any, Any],
                                                  hf_greedy: list[list[int]]):
    """The embeddings come from transformers' own embedding table, the reference
    from transformers' greedy decoding of the same tokens; half the batch sends
    embeddings, half token ids, in one step."""
    import torch

    tokenizer, model = hf_model
    chosen = [0, 3, 5, 6]
    with torch.no_grad():
        embeds = [model.get_input_embeddings()(
            tokenizer(PROMPTS[i], return_tensors="pt").input_ids)[0] for i in chosen]
    requests: list[Any] = [{"prompt_embeds": embeds[0]}, PROMPTS[chosen[1]],
                           {"prompt_embeds": embeds[2]}, PROMPTS[chosen[3]]]
    got = _ids(embeds_llm.generate(requests, _greedy(EMBEDS_TOKENS), use_tqdm=False))
    want = [hf_greedy[i][:EMBEDS_TOKENS] for i in chosen]
    for n, (g, w) in enumerate(zip(got, want, strict=True)):
        kind = "embeddings" if n % 2 == 0 else "token ids"
        assert g == w, f"prompt {PROMPTS[chosen[n]]!r} as {kind}: {g} against transformers' {w}"
    alone = _ids(embeds_llm.generate([{"prompt_embeds": embeds[0]}], _greedy(EMBEDS_TOKENS),
                                     use_tqdm=False))
    assert alone == got[:1], f"alone {alone[0]} against batched {got[0]}"
