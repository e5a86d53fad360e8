"""Engine behaviour: prefix caching, chunked prefill, preemption, abort and
concurrency, each leaving the output unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from vllm_harness.declaration import Profile
from vllm_harness.fixtures import PROMPTS, Engines, make_llm

pytestmark = pytest.mark.xdist_group("engine")

STORY = (
    "The lighthouse keeper had kept the lamp burning for forty years. Every night he "
    "climbed the spiral stairs, trimmed the wick, polished the great lens and watched "
    "the ships pass far out on the dark water. The village below had grown, the "
    "fishing boats had become ferries, and the children he once chased from the rocks "
    "now brought their own children to see the light. "
) * 3
NEW_TOKENS = 40


def _greedy(max_tokens: int = NEW_TOKENS) -> Any:
    from vllm import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def _ids(outputs: list[Any]) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def _counter(llm: Any, name: str) -> float:
    return sum(getattr(m, "value", 0) for m in llm.get_metrics() if m.name == name)


@pytest.mark.feature("engine.prefix_caching")
def test_prefix_cache_hit_keeps_output(llm: Any, profile: Profile):
    prompt = STORY + "One stormy evening,"
    hits_before = _counter(llm, "vllm:prefix_cache_hits")
    # a wrong cached block shows from the first new token on: 16 are plenty
    first = llm.generate([prompt], _greedy(16))[0]
    second = llm.generate([prompt], _greedy(16))[0]
    full_blocks = len(second.prompt_token_ids) // profile.block_size
    assert (second.num_cached_tokens or 0) >= profile.block_size * (full_blocks - 1), (
        f"{second.num_cached_tokens} of {len(second.prompt_token_ids)} prompt tokens "
        "came from the cache on the second identical request")
    assert _counter(llm, "vllm:prefix_cache_hits") - hits_before >= second.num_cached_tokens
    assert _ids([second]) == _ids([first]), "a prefix-cache hit changed the output"
    other = llm.generate([STORY + "On the first morning of spring,"], _greedy(1))[0]
    assert (other.num_cached_tokens or 0) >= profile.block_size, (
        "a prompt sharing the long prefix found nothing in the cache")


@pytest.fixture(scope="module")
def tight(engines: Engines, profile: Profile, model_dir: str) -> Any:
    """Prefill in chunks, and a KV cache too small for all of a batch at once."""
    chunk = max(64, profile.block_size)
    return engines.get("tight", lambda: make_llm(
        profile, model_dir, dtype="float32", max_num_batched_tokens=chunk,
        enable_chunked_prefill=True, max_num_seqs=16, enable_prefix_caching=False,
        num_gpu_blocks_override=_tight_blocks(profile)))


def _prompt_blocks(profile: Profile, prompt_tokens: int) -> int:
    return -(-(prompt_tokens + NEW_TOKENS) // profile.block_size)


def _tight_blocks(profile: Profile) -> int:
    # room for two of the prompts below (about 300 tokens each) and a little more
    return 2 * _prompt_blocks(profile, 330) + 1


def _story_prompts(n: int) -> list[str]:
    return [f"{STORY} Chapter {i}: the keeper" for i in range(n)]


@pytest.mark.feature("engine.chunked_prefill")
def test_chunked_prefill_keeps_output(llm: Any, tight: Any):
    prompts = _story_prompts(2)
    expected = _ids(llm.generate(prompts, _greedy()))
    chunk = tight.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    lengths = [len(ids) for ids in llm.get_tokenizer()(prompts).input_ids]
    assert min(lengths) > chunk, "every prompt must need more than one chunk"
    # both at once: each prompt in chunks, the second's sharing steps with the
    # first's last chunk and decode
    got = _ids(tight.generate(prompts, _greedy()))
    assert got == expected, "chunked prefill changed the output"


@pytest.mark.feature("engine.preemption")
def test_preemption_keeps_output(llm: Any, tight: Any, profile: Profile):
    prompts = _story_prompts(4)  # twice what the cache holds at once
    expected = _ids(llm.generate(prompts, _greedy()))
    blocks = tight.llm_engine.vllm_config.cache_config.num_gpu_blocks
    lengths = [len(ids) for ids in llm.get_tokenizer()(prompts).input_ids]
    needed = sum(_prompt_blocks(profile, n) for n in lengths)
    assert needed > blocks, f"the batch needs {needed} blocks and fits the {blocks} there are"
    before = _counter(tight, "vllm:num_preemptions")
    got = _ids(tight.generate(prompts, _greedy()))
    assert _counter(tight, "vllm:num_preemptions") > before, "nothing was preempted"
    assert got == expected, "preemption changed the output"


#: long enough that the abort, after 4 tokens, lands mid-request
ABORT_TOKENS = 32


@pytest.mark.feature("engine.abort")
def test_abort_frees_the_request_and_keeps_the_others(llm: Any):
    engine = llm.llm_engine
    prompts = PROMPTS[:3]
    expected = _ids(llm.generate(prompts, _greedy(ABORT_TOKENS)))
    for i, prompt in enumerate(prompts):
        engine.add_request(f"abort-test-{i}", prompt, _greedy(ABORT_TOKENS))
    produced: dict[str, list[int]] = {}
    finished: dict[str, list[int]] = {}
    aborted = False
    for _ in range(500):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            produced[out.request_id] = list(out.outputs[0].token_ids)
            if out.finished:
                finished[out.request_id] = produced[out.request_id]
        if not aborted and len(produced.get("abort-test-1", [])) >= 4:
            engine.abort_request(["abort-test-1"])
            aborted = True
    assert aborted, "the request to abort never produced 4 tokens"
    assert not engine.has_unfinished_requests(), "requests still running after 500 steps"
    assert "abort-test-1" not in finished, "the aborted request ran to completion"
    assert len(produced["abort-test-1"]) < ABORT_TOKENS
    assert [finished.get("abort-test-0"), finished.get("abort-test-2")] == [
        expected[0], expected[2]], "aborting one request changed the others"
    # the engine serves on (a few tokens show it)
    assert _ids(llm.generate(prompts[:1], _greedy(8))) == [expected[0][:8]]


@pytest.mark.feature("engine.concurrency")
def test_many_concurrent_requests_match_one_by_one(llm: Any):
    prompts = [f"{p} (variant {i})" for i in range(6) for p in PROMPTS]  # 48 requests
    batched = _ids(llm.generate(prompts, _greedy(16)))
    # one at a time (a decode step each token): four requests of different
    # prompts and places in the batch
    picked = range(0, len(prompts), 13)
    single = [_ids(llm.generate([prompts[i]], _greedy(16)))[0] for i in picked]
    assert [batched[i] for i in picked] == single, "a request's output depends on its batch"
    assert all(len(b) == 16 for b in batched)

