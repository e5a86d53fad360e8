"""A real ``vllm serve`` driven by the official openai client."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from vllm_harness.declaration import Profile
from vllm_harness.fixtures import SERVED_NAME, Server

pytestmark = pytest.mark.xdist_group("server")

# A question whose greedy answer no rounding can turn: the default model answers "The capital
# of Japan is Tokyo." and stops, every token ahead of the next by at least 0.96 nats in float32
# and in bfloat16. Its first token for "...capital of France?" leads by only 0.10 nats, and
# bfloat16 products off a native GEMM made it start in French and miss the stop.
QUESTION = [{"role": "user", "content": "What is the capital of Japan?"}]
ANSWER = "Tokyo"


@pytest.mark.feature("registration.activation_log")
def test_server_log_shows_activation(server: Server, profile: Profile):
    text = server.log.read_text()
    assert profile.activation_log in text, (
        f"the server log lacks the declared line {profile.activation_log!r}")


@pytest.mark.feature("server.models")
def test_models_and_health(server: Server, client: Any):
    assert [m.id for m in client.models.list().data] == [SERVED_NAME]
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


@pytest.mark.feature("server.completions")
def test_completion(client: Any):
    r = client.completions.create(model=SERVED_NAME, prompt="1, 2, 3, 4,", max_tokens=8,
                                  temperature=0, logprobs=2)
    assert r.choices[0].text.strip().startswith("5"), f"1, 2, 3, 4, -> {r.choices[0].text!r}"
    assert r.usage.completion_tokens == len(r.choices[0].logprobs.tokens)
    assert all(len(t) >= 2 for t in r.choices[0].logprobs.top_logprobs)


@pytest.mark.feature("server.chat")
def test_chat_completion(client: Any):
    r = client.chat.completions.create(model=SERVED_NAME, temperature=0, max_tokens=30,
                                       messages=QUESTION)
    assert ANSWER in r.choices[0].message.content, r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.feature("server.streaming")
def test_streaming_equals_whole(client: Any):
    args = dict(model=SERVED_NAME, prompt="The three primary colors are", temperature=0,
                max_tokens=20, extra_body={"ignore_eos": True})
    whole = client.completions.create(**args)
    pieces = [c.choices[0].text for c in client.completions.create(stream=True, **args)]
    assert len(pieces) > 3, "the stream came in one piece"
    assert "".join(pieces) == whole.choices[0].text
    stream = client.chat.completions.create(model=SERVED_NAME, temperature=0, max_tokens=30,
                                            messages=QUESTION, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert ANSWER in text, text


@pytest.mark.feature("server.tokenize")
def test_tokenize_round_trip(server: Server):
    tokens = requests.post(f"{server.url}/tokenize", timeout=10,
                           json={"model": SERVED_NAME, "prompt": "Hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) >= 2
    text = requests.post(f"{server.url}/detokenize", timeout=10,
                         json={"model": SERVED_NAME, "tokens": tokens["tokens"]}).json()
    assert text["prompt"] == "Hello world"


@pytest.mark.feature("server.metrics")
def test_metrics_count_requests(server: Server, client: Any):
    before = server.metric("vllm:request_success_total")
    client.completions.create(model=SERVED_NAME, prompt="Hi", max_tokens=2)
    assert server.metric("vllm:request_success_total") == before + 1


def _token_ids(server: Server, text: str) -> list[int]:
    return requests.post(f"{server.url}/tokenize", timeout=10,
                         json={"model": SERVED_NAME, "prompt": text}).json()["tokens"]


ECHO_PROMPT = "The capital of France is"


@pytest.mark.feature("server.echo")
def test_echo(server: Server, client: Any):
    alone = client.completions.create(model=SERVED_NAME, prompt=ECHO_PROMPT, max_tokens=0,
                                      echo=True, logprobs=1)
    choice = alone.choices[0]
    assert choice.text == ECHO_PROMPT, f"echo with max_tokens=0 gave {choice.text!r}"
    assert "".join(choice.logprobs.tokens) == ECHO_PROMPT, choice.logprobs.tokens
    assert len(choice.logprobs.tokens) == len(_token_ids(server, ECHO_PROMPT))
    first, *rest = choice.logprobs.token_logprobs
    assert first is None and all(lp is not None and lp <= 0 for lp in rest), (
        f"prompt logprobs {choice.logprobs.token_logprobs}: the first has none, the rest <= 0")
    args = dict(model=SERVED_NAME, prompt=ECHO_PROMPT, max_tokens=6, temperature=0)
    plain = client.completions.create(**args).choices[0].text
    echoed = client.completions.create(echo=True, **args).choices[0].text
    assert echoed == ECHO_PROMPT + plain, f"echo gave {echoed!r}, the completion {plain!r}"


@pytest.mark.feature("server.prompt_logprobs")
def test_prompt_logprobs(server: Server, client: Any):
    k = 2
    r = client.completions.create(model=SERVED_NAME, prompt=ECHO_PROMPT, max_tokens=1,
                                  temperature=0, extra_body={"prompt_logprobs": k})
    entries = r.choices[0].model_extra.get("prompt_logprobs")
    ids = _token_ids(server, ECHO_PROMPT)
    assert entries is not None and len(entries) == len(ids), (
        f"{len(ids)} prompt tokens, prompt_logprobs {entries}")
    assert entries[0] is None, "the first prompt token has no logprob"
    for position, (token, entry) in enumerate(zip(ids[1:], entries[1:], strict=True), 1):
        assert str(token) in entry, f"position {position}: prompt token {token} not in {entry}"
        assert k <= len(entry) <= k + 1, f"position {position}: asked for {k}, got {entry}"
        best = max(entry.values(), key=lambda e: e["logprob"])
        assert best["rank"] == 1 and all(e["logprob"] <= 0 for e in entry.values()), entry
    # the same numbers as echo's logprobs, which vLLM computes on another path
    echo = client.completions.create(model=SERVED_NAME, prompt=ECHO_PROMPT, max_tokens=0,
                                     echo=True, logprobs=1).choices[0].logprobs.token_logprobs
    mine = [e[str(t)]["logprob"] for t, e in zip(ids[1:], entries[1:], strict=True)]
    assert mine == pytest.approx(echo[1:], abs=1e-4), f"{mine} against echo's {echo[1:]}"


@pytest.mark.feature("server.logit_bias")
def test_logit_bias(server: Server, client: Any):
    args = dict(model=SERVED_NAME, prompt="1, 2, 3,", max_tokens=6, temperature=0,
                extra_body={"return_token_ids": True})
    plain = client.completions.create(**args).choices[0]
    forced = _token_ids(server, " banana")[0]
    r = client.completions.create(logit_bias={str(forced): 100}, **args).choices[0]
    assert r.model_extra["token_ids"] == [forced] * 6, (
        f"a bias of +100 on ' banana' gave {r.text!r}")
    banned = plain.model_extra["token_ids"][0]
    r = client.completions.create(logit_bias={str(banned): -100}, **args).choices[0]
    assert r.model_extra["token_ids"][0] != banned, (
        f"a bias of -100 on the greedy first token {banned} left it first: {r.text!r}")


@pytest.mark.feature("server.n_streaming")
def test_n_streamed(server: Server, client: Any):
    """n sampled completions in one stream: each index's pieces join into the text
    of its own tokens, none cut short, the n apart. (Not compared with a whole
    request of the same seed: in 16-bit a different batch shape may round a logit
    across a sampling boundary, and the two runs part.)"""
    args = dict(model=SERVED_NAME, prompt="Once upon a time", max_tokens=12, temperature=1.0,
                seed=3, n=2, stream=True,
                extra_body={"ignore_eos": True, "return_token_ids": True})
    texts: dict[int, str] = {}
    tokens: dict[int, list[int]] = {}
    finished: dict[int, str] = {}
    for chunk in client.completions.create(**args):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            tokens.setdefault(choice.index, []).extend(choice.model_extra.get("token_ids") or [])
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert sorted(texts) == [0, 1], f"streamed choices {sorted(texts)}, asked for 2"
    for index in (0, 1):
        assert finished.get(index) == "length" and len(tokens[index]) == 12, (
            f"choice {index}: {len(tokens[index])} tokens, finish {finished.get(index)}")
        words = requests.post(f"{server.url}/detokenize", timeout=10, json={
            "model": SERVED_NAME, "tokens": tokens[index]}).json()["prompt"]
        assert texts[index] == words, f"choice {index}: streamed {texts[index]!r}, " \
            f"its tokens say {words!r}"
    assert texts[0] != texts[1], f"two samples alike: {texts}"


@pytest.mark.feature("server.responses")
def test_responses(client: Any):
    args = dict(model=SERVED_NAME, input=QUESTION[0]["content"], temperature=0,
                max_output_tokens=30)
    r = client.responses.create(**args)
    assert r.status == "completed" and ANSWER in r.output_text, (r.status, r.output_text)
    events = list(client.responses.create(stream=True, **args))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == r.output_text, f"streamed {text!r} against whole {r.output_text!r}"
    assert events[-1].type == "response.completed", events[-1].type
