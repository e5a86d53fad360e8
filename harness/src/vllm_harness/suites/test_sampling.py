"""Every SamplingParams field vLLM documents, judged by what it must do to the output."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

pytestmark = pytest.mark.xdist_group("engine")

PROMPT = "Once upon a time, in a small village by the sea, there lived"
CHAT = "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n"


def _repetition(ids: list[int]) -> int:
    """Sum of squared token counts: lower when tokens repeat less."""
    return sum(n * n for n in Counter(ids).values())


def _ids(llm: Any, prompts: list[str] | None = None, **params: Any) -> list[list[int]]:
    from vllm import SamplingParams

    outs = llm.generate(prompts or [PROMPT], SamplingParams(**params))
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.fixture(scope="module")
def greedy(llm: Any) -> list[int]:
    return _ids(llm, temperature=0, max_tokens=32, ignore_eos=True)[0]


def _batch(llm: Any, prompt: str, params: list[dict[str, Any]]) -> list[Any]:
    """One request per entry of ``params``, in one batch: decoding on these
    machines costs a read of every weight per step, whatever the batch."""
    from vllm import SamplingParams

    outs = llm.generate([prompt] * len(params), [SamplingParams(**p) for p in params])
    return [o.outputs[0] for o in outs]


@pytest.mark.feature("sampling.seed")
def test_seed_reproduces_and_seeds_differ(llm: Any):
    def params(seed: int) -> dict[str, Any]:
        return dict(temperature=1.0, seed=seed, max_tokens=24, ignore_eos=True)

    # seeds 7 and 8 side by side, then 7 again alone: a request's draws follow
    # its own seed, whatever else runs in its batch
    first, other = (list(o.token_ids) for o in _batch(llm, PROMPT, [params(7), params(8)]))
    again = list(_batch(llm, PROMPT, [params(7)])[0].token_ids)
    assert again == first, "the same seed gave different tokens"
    assert other != first, "different seeds gave the same 24 tokens"


@pytest.mark.feature("sampling.temperature")
def test_temperature_departs_from_greedy(llm: Any, greedy: list[int]):
    outs = _batch(llm, PROMPT, [dict(temperature=1.5, seed=s, max_tokens=32, ignore_eos=True)
                                for s in range(3)])
    assert any(list(o.token_ids) != greedy for o in outs), (
        "temperature 1.5 reproduced greedy three times")


@pytest.mark.feature("sampling.top_k")
def test_top_k(llm: Any, greedy: list[int]):
    one = _ids(llm, temperature=1.0, top_k=1, seed=3, max_tokens=32, ignore_eos=True)[0]
    assert one == greedy, "top_k=1 is not greedy"
    from vllm import SamplingParams

    out = llm.generate([PROMPT], SamplingParams(temperature=2.0, top_k=3, seed=1, max_tokens=1,
                                                logprobs=20))[0].outputs[0]
    # logprobs are of the raw distribution: the sampled token is among its top 3
    assert out.logprobs[0][out.token_ids[0]].rank <= 3, "top_k=3 sampled outside the top 3"


@pytest.mark.feature("sampling.top_p")
def test_top_p(llm: Any, greedy: list[int]):
    got = _ids(llm, temperature=1.0, top_p=1e-6, seed=3, max_tokens=32, ignore_eos=True)[0]
    assert got == greedy, "top_p~0 is not greedy"


@pytest.mark.feature("sampling.min_p")
def test_min_p(llm: Any, greedy: list[int]):
    got = _ids(llm, temperature=1.0, min_p=1.0, seed=3, max_tokens=32, ignore_eos=True)[0]
    assert got == greedy, "min_p=1 is not greedy"


PENALTIES = {"repetition": {"repetition_penalty": 1.8}, "frequency": {"frequency_penalty": 1.5},
             "presence": {"presence_penalty": 1.5}}


@pytest.fixture(scope="module")
def penalized(llm: Any) -> dict[str, list[int]]:
    """60 greedy tokens without a penalty and with each, side by side in one batch."""
    cases = {"none": {}, **PENALTIES}
    outs = _batch(llm, PROMPT, [dict(temperature=0, max_tokens=60, ignore_eos=True, **p)
                                for p in cases.values()])
    return {name: list(o.token_ids) for name, o in zip(cases, outs, strict=True)}


@pytest.mark.feature("sampling.penalties")
@pytest.mark.parametrize("name", PENALTIES)
def test_penalties_reduce_repetition(penalized: dict[str, list[int]], name: str):
    base, pen, penalty = penalized["none"], penalized[name], PENALTIES[name]
    assert pen != base, f"{penalty} changed nothing"
    assert _repetition(pen) < _repetition(base), f"{penalty} did not reduce repetition"


@pytest.mark.feature("sampling.stop")
def test_stop_string_and_token(llm: Any, greedy: list[int]):
    from vllm import SamplingParams

    tokenizer = llm.get_tokenizer()
    text = tokenizer.decode(greedy)
    word = text.split()[3]
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True,
                                                stop=[word]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == word, (
        f"stop={word!r} ended with {out.finish_reason}/{out.stop_reason}")
    assert word not in out.text and text.startswith(out.text)
    stop_id = greedy[5]
    first = greedy.index(stop_id)
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True,
                                                stop_token_ids=[stop_id]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    assert list(out.token_ids) == greedy[:first + 1], "stop token is not the last token"


@pytest.mark.feature("sampling.min_tokens")
def test_min_tokens_and_ignore_eos(llm: Any):
    short, held, full = _batch(llm, CHAT, [dict(temperature=0, max_tokens=50, **p) for p in (
        {}, {"min_tokens": 25}, {"ignore_eos": True})])
    assert short.finish_reason == "stop" and len(short.token_ids) < 20, (
        "the reference answer should end early on EOS")
    assert len(held.token_ids) >= 25, "min_tokens=25 ended earlier"
    assert len(full.token_ids) == 50 and full.finish_reason == "length", "ignore_eos stopped"


@pytest.mark.feature("sampling.logprobs")
def test_logprobs_count_and_ranks(llm: Any):
    from vllm import SamplingParams

    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=6,
                                                logprobs=5))[0].outputs[0]
    assert len(out.logprobs) == len(out.token_ids)
    for token, lp in zip(out.token_ids, out.logprobs, strict=True):
        assert token in lp and lp[token].rank == 1, "greedy did not pick the top token"
        assert 5 <= len(lp) <= 6, f"asked for 5 logprobs, got {len(lp)}"
        values = [e.logprob for e in lp.values()]
        assert max(values) <= 0


@pytest.mark.feature("sampling.n")
def test_n_completions(llm: Any):
    from vllm import SamplingParams

    out = llm.generate([PROMPT], SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=16))[0]
    assert len(out.outputs) == 3, f"n=3 gave {len(out.outputs)} completions"
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1, "three identical samples"


BEAM_PROMPTS = ["The best way to learn a language is", "def fibonacci(n):"]
BEAM_WIDTH, BEAM_TOKENS = 3, 8


def _beam_search_by_hand(hf_model: tuple[Any, Any], prompt: str,
                         max_tokens: int = BEAM_TOKENS) -> list[tuple[list[int], float]]:
    """The textbook beam search on transformers' float32 model, end of text
    ignored: each step keeps the ``BEAM_WIDTH`` best continuations of all beams
    by their summed log-probabilities."""
    import torch

    tokenizer, model = hf_model
    prompt_ids = tokenizer(prompt).input_ids
    beams: list[tuple[list[int], float]] = [([], 0.0)]
    with torch.no_grad():
        for _ in range(max_tokens):
            batch = torch.tensor([prompt_ids + tokens for tokens, _ in beams])
            logprobs = torch.log_softmax(model(batch).logits[:, -1].float(), dim=-1)
            scores = logprobs + torch.tensor([score for _, score in beams])[:, None]
            best = torch.topk(scores.flatten(), BEAM_WIDTH)
            vocab = scores.shape[1]
            beams = [(beams[i // vocab][0] + [i % vocab], float(s))
                     for i, s in zip(best.indices.tolist(), best.values.tolist(), strict=True)]
    return beams


@pytest.mark.feature("sampling.beam_search")
def test_beam_search_equals_transformers(llm: Any, hf_model: tuple[Any, Any]):
    from vllm.sampling_params import BeamSearchParams

    params = BeamSearchParams(beam_width=BEAM_WIDTH, max_tokens=BEAM_TOKENS, ignore_eos=True)
    outs = llm.beam_search([{"prompt": p} for p in BEAM_PROMPTS], params)
    for prompt, out in zip(BEAM_PROMPTS, outs, strict=True):
        n_prompt = len(hf_model[0](prompt).input_ids)
        got = [(list(s.tokens[n_prompt:]), s.cum_logprob) for s in out.sequences]
        ref = _beam_search_by_hand(hf_model, prompt)
        assert [tokens for tokens, _ in got] == [tokens for tokens, _ in ref], (
            f"{prompt!r}: beams {got} against transformers' {ref}")
        for (_, score), (_, ref_score) in zip(got, ref, strict=True):
            assert abs(score - ref_score) < 1e-2, f"{prompt!r}: {score} against {ref_score}"


@pytest.mark.feature("sampling.beam_search")
@pytest.mark.xdist_group("server")
def test_served_beam_search_equals_transformers(client: Any, hf_model: tuple[Any, Any]):
    """``use_beam_search`` on /v1/completions: the beams come back as the
    ``n`` choices, best first. The server runs the platform's reduced precision,
    so the prompt is one whose beams, and the best candidate each step drops,
    stay 0.5 nats or more apart in float32 transformers (those of the offline
    prompts come within 0.09, and bfloat16 rounding reorders them)."""
    from vllm_harness.fixtures import SERVED_NAME

    prompt, tokens = "A, B, C, D,", 5
    r = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=tokens,
                                  n=BEAM_WIDTH, temperature=0,
                                  extra_body={"use_beam_search": True, "ignore_eos": True})
    got = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    ref = [hf_model[0].decode(ids)
           for ids, _ in _beam_search_by_hand(hf_model, prompt, tokens)]
    assert got == ref, f"{prompt!r}: served beams {got} against transformers' {ref}"
