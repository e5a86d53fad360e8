"""Shared fixtures of the plugin's own tests: the default model, its transformers
model, and one engine per configuration for the whole session.

Engines are expensive (seconds each, hundreds of MB), so every configuration
is built once and its tests are pinned to one pytest-xdist worker through an
``xdist_group`` of the same name (run with ``--dist loadgroup``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_SIM", "1")
# Lets tests pass functions to collective_rpc to inspect the workers' models.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
# Every process of the suite talks over loopback only.
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
# Two cores shared by two xdist workers: one thread per engine and per test
# process (the transformers references run here). Two OpenMP threads in each
# of two busy processes spin at each other's barriers: 8x slower.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("VLLM_CPU_SIM_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # read when torch loads

sys.path.insert(0, str(Path(__file__).parent))

# The harness's shared fixtures: the default model and its variants, the
# transformers model, the session's engine pool, a free loopback port.
from vllm_harness.fixtures import (  # noqa: F401
    engines,
    free_port,
    hf_greedy,
    hf_model,
    hf_tokenizer,
    model_dir,
    tiny_model_dir,
    tp2_hf_greedy,
    tp2_model_dir,
)


def make_llm(model: str, **kwargs):
    from vllm import LLM

    kwargs.setdefault("max_model_len", 512)
    # Compiling costs 10-30 s an engine; test_compiled covers that path.
    kwargs.setdefault("enforce_eager", True)
    kwargs.setdefault("additional_config", {"cpu_sim": {"device_memory": "1536MiB"}})
    return LLM(model=model, **kwargs)
