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
