"""Bad input and load: each bad request gets a 4xx with a reason while the
server keeps serving; many clients at once lose nothing; a client that goes
away gives its KV blocks back."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from vllm_harness.declaration import Profile
from vllm_harness.fixtures import SERVED_NAME, Server

pytestmark = pytest.mark.xdist_group("server")

CLIENTS = 64
LOAD_TOKENS = 8
LOAD_DEADLINE_S = 300


def _post(server: Server, body: Any, raw: bool = False) -> requests.Response:
    url = f"{server.api}/completions"
    if raw:
        return requests.post(url, data=body, timeout=60,
                             headers={"content-type": "application/json"})
    return requests.post(url, json=body, timeout=60)


def _still_serving(server: Server) -> None:
    r = _post(server, {"model": SERVED_NAME, "prompt": "1, 2, 3,", "max_tokens": 4,
                       "temperature": 0})
    assert r.status_code == 200, f"after a bad request the server answers {r.status_code}"
    assert r.json()["choices"][0]["text"].strip().startswith("4")


def _expect_4xx(r: requests.Response, *words: str) -> str:
    assert 400 <= r.status_code < 500, f"got HTTP {r.status_code}: {r.text[:300]}"
    text = r.text
    for word in words:
        assert word in text, f"the error does not mention {word!r}: {text[:300]}"
    return text


@pytest.mark.feature("robustness.malformed_json")
def test_malformed_json(server: Server):
    _expect_4xx(_post(server, "{not json", raw=True))
    _still_serving(server)


@pytest.mark.feature("robustness.unknown_model")
def test_unknown_model(server: Server):
    r = _post(server, {"model": "no-such-model", "prompt": "hi"})
    assert r.status_code == 404, f"got HTTP {r.status_code}"
    _expect_4xx(r, "no-such-model")
    _still_serving(server)


@pytest.mark.feature("robustness.overlong_prompt")
def test_overlong_prompt(server: Server):
    r = _post(server, {"model": SERVED_NAME, "prompt": [1] * (server.max_model_len + 50),
                       "max_tokens": 5})
    assert r.status_code == 400, f"got HTTP {r.status_code}"
    _expect_4xx(r, str(server.max_model_len))
    _still_serving(server)


@pytest.mark.feature("robustness.invalid_params")
@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -1), ("top_p", 2.0), ("max_tokens", -3), ("n", 0),
])
def test_invalid_sampling_params(server: Server, field: str, value: Any):
    r = _post(server, {"model": SERVED_NAME, "prompt": "hi", field: value})
    assert r.status_code == 400, f"{field}={value}: got HTTP {r.status_code}"
    _expect_4xx(r, field)
    _still_serving(server)


@pytest.mark.feature("robustness.unservable")
def test_request_the_platform_cannot_serve(server: Server, profile: Profile):
    request = profile.unservable_request
    if not request:
        pytest.skip("the declaration names no request the platform cannot serve "
                    "([engine] unservable_request)")
    body = {"model": SERVED_NAME, "prompt": [1] * int(request["prompt_tokens"]),
            "max_tokens": int(request["max_tokens"]), "temperature": 0}
    r = _post(server, body)
    assert r.status_code == 400, (
        f"a request the platform declares unservable ({request}) got HTTP {r.status_code}")
    _expect_4xx(r, *([request["reason"]] if "reason" in request else []))
    _still_serving(server)


def _stream(api: str, i: int) -> tuple[int, str]:
    """Tokens the server says it streamed (usage, since a fast engine may merge
    several tokens into one chunk) and the finish reason."""
    import openai

    client = openai.OpenAI(base_url=api, api_key="none", max_retries=0, timeout=LOAD_DEADLINE_S)
    stream = client.completions.create(
        model=SERVED_NAME, prompt=f"Client {i} counts: 1, 2, 3,", max_tokens=LOAD_TOKENS,
        temperature=0.8, seed=i, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    tokens, finish = 0, None
    for c in stream:
        if c.choices:
            finish = c.choices[0].finish_reason or finish
        if c.usage is not None:
            tokens = c.usage.completion_tokens
    return tokens, str(finish)


@pytest.mark.feature("robustness.load")
def test_concurrent_streaming_clients(server: Server):
    before = server.metric("vllm:request_success_total")
    start = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda i: _stream(server.api, i), range(CLIENTS)))
    took = time.monotonic() - start
    short = [i for i, (tokens, finish) in enumerate(results)
             if tokens != LOAD_TOKENS or finish != "length"]
    assert not short, f"{len(short)} of {CLIENTS} streams ended early: {short[:8]}"
    assert took < LOAD_DEADLINE_S, f"{CLIENTS} streams took {took:.0f} s"
    assert server.metric("vllm:request_success_total") == before + CLIENTS
    print(f"{CLIENTS} streaming clients x {LOAD_TOKENS} tokens in {took:.1f} s")


def _idle(server: Server, timeout: float = 60) -> tuple[float, float]:
    deadline = time.monotonic() + timeout
    while True:
        running = server.metric("vllm:num_requests_running")
        usage = server.metric("vllm:kv_cache_usage_perc")
        if (running == 0 and usage == 0) or time.monotonic() > deadline:
            return running, usage
        time.sleep(0.5)


@pytest.mark.feature("robustness.disconnect")
def test_disconnect_frees_kv_blocks(server: Server):
    _idle(server)
    generated_before = server.metric("vllm:generation_tokens_total")
    # 400 tokens: many seconds of decoding, so the request is still running when the
    # client leaves after five chunks
    body = {"model": SERVED_NAME, "prompt": "Tell me a very long story.", "max_tokens": 400,
            "temperature": 0, "stream": True, "ignore_eos": True}
    with requests.post(f"{server.api}/completions", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200
        chunks = 0
        for line in r.iter_lines():
            if not line:
                continue
            event = json.loads(line.removeprefix(b"data: "))
            assert "error" not in event, f"the stream carried an error: {event}"
            chunks += bool(event["choices"][0]["text"])
            if chunks >= 5:
                break  # leave mid-stream: closing the connection must abort the request
    running, usage = _idle(server)
    assert running == 0, f"{running} requests still running 60 s after the client left"
    assert usage == 0, f"KV cache usage {usage} 60 s after the client left, not back to idle"
    generated = server.metric("vllm:generation_tokens_total") - generated_before
    assert generated < 400, "the request ran to its end after the client left"
