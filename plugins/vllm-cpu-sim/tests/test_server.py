"""A real ``vllm serve`` on cpu_sim, driven by the official openai client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests
from conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("server")]

MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    return tmp_path_factory.mktemp("server") / "serve.log"


@pytest.fixture(scope="module")
def server(model_dir, server_log) -> Iterator[str]:
    port = free_port()
    log = server_log
    env = dict(os.environ, VLLM_CPU_SIM_DEVICE_MEMORY="1GiB")
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model_dir,
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "smollm2",
        "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "bfloat16",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not healthy in time:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    assert requests.get(f"{server}/health", timeout=5).status_code == 200


def test_chat_completion(client):
    r = client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=30,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens >= 5


def test_completion_and_streaming_agree(client):
    args = dict(model="smollm2", prompt="The three primary colors are", temperature=0,
                max_tokens=20)
    whole = client.completions.create(**args)
    pieces = [c.choices[0].text for c in client.completions.create(stream=True, **args)]
    assert len(pieces) > 3
    assert "".join(pieces) == whole.choices[0].text
    assert whole.usage.completion_tokens == 20


def test_chat_streaming(client):
    stream = client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=30, stream=True,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "Paris" in text


def test_tokenize_round_trip(server):
    tokens = requests.post(f"{server}/tokenize", json={"model": "smollm2",
                                                       "prompt": "Hello world"},
                           timeout=10).json()
    assert tokens["count"] == len(tokens["tokens"]) >= 2
    text = requests.post(f"{server}/detokenize", json={"model": "smollm2",
                                                       "tokens": tokens["tokens"]},
                         timeout=10).json()["prompt"]
    assert text == "Hello world"


def test_metrics_count_requests(server, client):
    def total() -> float:
        body = requests.get(f"{server}/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                   if line.startswith("vllm:request_success_total"))

    before = total()
    client.completions.create(model="smollm2", prompt="Hi", max_tokens=2)
    assert total() == before + 1


def test_bad_requests_get_4xx_and_server_keeps_serving(server, client):
    url = f"{server}/v1/completions"
    malformed = requests.post(url, data="{not json", timeout=10,
                              headers={"content-type": "application/json"})
    assert 400 <= malformed.status_code < 500
    unknown = requests.post(url, json={"model": "nope", "prompt": "hi"}, timeout=10)
    assert unknown.status_code == 404 and "nope" in unknown.text
    too_long = requests.post(url, json={"model": "smollm2", "prompt": "hello " * 2000,
                                        "max_tokens": 5}, timeout=30)
    assert too_long.status_code == 400
    assert str(MAX_MODEL_LEN) in too_long.json()["error"]["message"]
    bad_param = requests.post(url, json={"model": "smollm2", "prompt": "hi",
                                         "temperature": -1}, timeout=10)
    assert bad_param.status_code == 400 and "temperature" in bad_param.text
    r = client.completions.create(model="smollm2", prompt="1, 2, 3,", max_tokens=5,
                                  temperature=0)
    assert r.choices[0].text.strip().startswith("4")


def test_server_log_shows_activation(server_log):
    text = server_log.read_text()
    assert "Platform plugin cpu_sim is activated" in text
    assert "cpu_sim device memory 1.00 GiB" in text


def test_json_body_of_completion(server):
    r = requests.post(f"{server}/v1/completions", json={
        "model": "smollm2", "prompt": "The capital of France is", "max_tokens": 3,
        "temperature": 0, "logprobs": 2,
    }, timeout=30)
    body = r.json()
    assert r.status_code == 200, json.dumps(body)
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 3 and all(len(t) >= 2 for t in lp["top_logprobs"])
