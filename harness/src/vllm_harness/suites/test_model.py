"""Architectures beyond the default model, and a long context, each held to
transformers' greedy ids in float32.

The other architectures are seeded random models with the default model's
tokenizer (:data:`vllm_harness.models.RANDOM_MODELS`): their weights decide
nothing here but that a wrong layer gives other tokens. The Gemma 3 model's
sliding-window layers see 16 positions, so every prompt past 16 tokens, and
every decode step past it, depends on the window being applied.

The engines run eagerly: this suite judges the layers of each architecture; a
platform's graph runtime is judged on the default model by the other suites.
"""

from __future__ import annotations

from typing import Any

import pytest

from vllm_harness.declaration import Profile
from vllm_harness.fixtures import (
    PROMPTS,
    Engines,
    load_hf,
    make_llm,
    make_llm_apart,
    reference_greedy,
)

pytestmark = pytest.mark.xdist_group("model")

TOKENS = 16
LONG = ("In the archive of the old observatory, every night of observation was written "
        "down by hand: the date, the weather, the instrument, the stars that were seen, "
        "and a line or two about whatever else the observer had noticed. ")
#: a prompt past the sliding window, beside short ones
MIXED = [*PROMPTS[:4], LONG]
#: the long-context case: tokens of prompt, and the context the engine is given
LONG_PROMPT_TOKENS = 2000
LONG_MAX_MODEL_LEN = 2304


def _greedy_ids(llm: Any, prompts: list[Any], tokens: int = TOKENS) -> list[list[int]]:
    from vllm import SamplingParams

    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=tokens,
                                                ignore_eos=True), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _check(variant: str, profile: Profile, engines: Engines, apart: bool = False) -> None:
    from vllm_harness.models import prepare

    model = str(prepare(variant, quiet=True))
    want = reference_greedy(model, lambda: load_hf(model), MIXED, TOKENS)
    build = make_llm_apart if apart else make_llm
    llm = engines.get(variant, lambda: build(profile, model, dtype="float32",
                                             enforce_eager=True))
    got = _greedy_ids(llm, MIXED)
    wrong = [f"{p[:40]!r}: {g} against {w}" for p, g, w in zip(MIXED, got, want, strict=True)
             if g != w]
    assert not wrong, f"{variant}, greedy ids against transformers': " + "; ".join(wrong)


@pytest.mark.feature("model.qwen3")
def test_qwen3(profile: Profile, engines: Engines):
    _check("qwen3-random", profile, engines)


@pytest.mark.feature("model.sliding_window")
def test_gemma3_sliding_window(profile: Profile, engines: Engines):
    _check("gemma3-random", profile, engines)


@pytest.mark.feature("model.moe_routed")
def test_routed_moe(profile: Profile, engines: Engines):
    _check("moe-random", profile, engines, apart=True)  # after dense models here


@pytest.mark.feature("model.long_context")
def test_long_context(profile: Profile, engines: Engines, model_dir: str,
                      request: pytest.FixtureRequest):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(LONG * 60).input_ids[:LONG_PROMPT_TOKENS]
    assert len(ids) == LONG_PROMPT_TOKENS
    prompt = AutoTokenizer.from_pretrained(model_dir).decode(ids)
    want = reference_greedy(model_dir, lambda: request.getfixturevalue("hf_model"),
                            [prompt], TOKENS)
    llm = engines.get("long", lambda: make_llm(profile, model_dir, dtype="float32",
                                               max_model_len=LONG_MAX_MODEL_LEN,
                                               enforce_eager=True))
    from vllm import SamplingParams

    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=TOKENS,
                                                ignore_eos=True), use_tqdm=False)[0]
    assert len(out.prompt_token_ids) >= LONG_PROMPT_TOKENS - 5, len(out.prompt_token_ids)
    blocks = -(-len(out.prompt_token_ids) // profile.block_size)
    assert list(out.outputs[0].token_ids) == want[0], (
        f"a {len(out.prompt_token_ids)}-token prompt over {blocks} KV blocks: "
        f"{list(out.outputs[0].token_ids)} against transformers' {want[0]}")
