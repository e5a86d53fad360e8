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
from conftest import PROMPTS, free_port, make_llm
from vllm import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("parallel")]

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def _generate(model_dir: str, **kwargs) -> list[list[int]]:
    llm = make_llm(model_dir, dtype="float32", **kwargs)
    try:
        return [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, GREEDY)]
    finally:
        llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def tp1_outputs(tp2_model_dir) -> list[list[int]]:
    return _generate(tp2_model_dir)


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


def test_tp2_ray_equals_tp1(tp2_model_dir, tp1_outputs, ray_cluster, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    got = _generate(tp2_model_dir, tensor_parallel_size=2, distributed_executor_backend="ray")
    assert got == tp1_outputs
