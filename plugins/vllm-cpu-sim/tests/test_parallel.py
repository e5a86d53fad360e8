"""Tensor parallel 2 over gloo through vLLM's Ray executor, on a local Ray cluster with
this platform's devices as logical GPUs (the conformance suite checks the
multiprocessing executor)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from conftest import free_port, make_llm
from vllm import SamplingParams

from vllm_harness.fixtures import MAX_TOKENS, PROMPTS

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("parallel")]

#: Three of the harness's prompts: a batch of several requests is all this needs.
RAY_PROMPTS = 3


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster on loopback with two simulated devices (logical GPUs)."""
    ray = shutil.which("ray")
    if ray is None:
        pytest.fail("the ray command is missing: install the plugin's test extra")
    port = free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    # Ray's socket paths must stay short, so not pytest's deep tmp_path.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    start = [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--num-cpus=2", "--num-gpus=2", "--include-dashboard=false",
             f"--temp-dir={temp}", "--disable-usage-stats"]
    result = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_tp2_ray_equals_transformers(tp2_model_dir, tp2_hf_greedy, ray_cluster, monkeypatch):
    """Held to transformers' tokens on that model (computed once per machine and
    cached by the harness), rather than to a second engine of one worker."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    llm = make_llm(tp2_model_dir, dtype="float32", tensor_parallel_size=2,
                   distributed_executor_backend="ray")
    try:
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        got = [list(o.outputs[0].token_ids)
               for o in llm.generate(PROMPTS[:RAY_PROMPTS], params)]
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert got == tp2_hf_greedy[:RAY_PROMPTS]
