"""``vllm serve`` with warmup shapes from the environment: a request no shape
fits gets HTTP 400 naming the shapes, and the server keeps serving."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("server")]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    from vllm_harness.fixtures import serving

    log = tmp_path_factory.mktemp("server") / "serve.log"
    env = dict(os.environ,
               VLLM_SPYRE_LIKE_WARMUP_PROMPT_LENS="64,128",
               VLLM_SPYRE_LIKE_WARMUP_NEW_TOKENS="20,8",
               VLLM_SPYRE_LIKE_WARMUP_BATCH_SIZES="4,2",
               VLLM_SPYRE_LIKE_COMPILE_BACKEND="eager")
    args = [model_dir, "--served-model-name", "m", "--dtype", "float32",
            "--max-model-len", "256"]
    with serving(args, log, env) as url:
        yield url, log


def complete(url: str, prompt, max_tokens: int):
    import requests

    return requests.post(f"{url}/v1/completions", timeout=120, json={
        "model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})


@pytest.mark.parametrize(("prompt_tokens", "max_tokens"), [(129, 4), (100, 9), (10, 21)])
def test_unfittable_request_gets_400_naming_the_shapes(server, prompt_tokens, max_tokens):
    url, _ = server
    r = complete(url, [1] * prompt_tokens, max_tokens)
    assert r.status_code == 400, (r.status_code, r.text)
    message = r.json()["error"]["message"]
    assert "does not fit any warmup shape" in message
    assert "(prompt_len=64, new_tokens=20, batch_size=4)" in message
    assert "(prompt_len=128, new_tokens=8, batch_size=2)" in message
    # still serving, both shapes
    ok = complete(url, "The capital of France is", 5)
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["text"]
    ok = complete(url, [1] * 120, 8)
    assert ok.status_code == 200, ok.text


def test_activation_is_logged(server):
    _, log = server
    assert "Platform plugin spyre_like is activated" in log.read_text()
