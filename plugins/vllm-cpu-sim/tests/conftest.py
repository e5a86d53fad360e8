"""Shared fixtures of the plugin's own tests: the default model, its transformers
model, and one engine per configuration for the whole session.

Engines are expensive (seconds each, hundreds of MB), so every configuration
is built once and its tests are pinned to one pytest-xdist worker through an
``xdist_group`` of the same name (run with ``--dist loadgroup``).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_SIM", "1")
# Lets tests pass functions to collective_rpc to inspect the workers' models.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
# Every process of the suite talks over loopback only.
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
# Two cores shared by two xdist workers: one thread per engine avoids
# OpenMP oversubscription.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("VLLM_CPU_SIM_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))

#: For the Ray test: the conformance suite covers output against transformers.
PROMPTS = ["The quick brown fox", "1, 2, 3, 4,", "The capital of France is"]


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_dir() -> str:
    from vllm_harness.models import prepare

    return str(prepare("full", quiet=True))


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    from vllm_harness.models import prepare

    return str(prepare("tiny", quiet=True))


@pytest.fixture(scope="session")
def tp2_model_dir() -> str:
    """The default model with heads tensor parallelism 2 can split (see vllm_harness)."""
    from vllm_harness.models import prepare

    return str(prepare("tp2", quiet=True))


@pytest.fixture(scope="session")
def hf_model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return tokenizer, model


class Engines:
    """Builds each engine configuration once per session and shuts all down at the end."""

    def __init__(self) -> None:
        self._engines: dict[str, object] = {}

    def get(self, name: str, build: Callable[[], object]):
        if name not in self._engines:
            self._engines[name] = build()
        return self._engines[name]

    def close(self) -> None:
        for engine in self._engines.values():
            shutdown = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
            if shutdown is not None:
                shutdown.shutdown()
        self._engines.clear()


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    pool = Engines()
    yield pool
    pool.close()


def make_llm(model: str, **kwargs):
    from vllm import LLM

    kwargs.setdefault("max_model_len", 512)
    kwargs.setdefault("additional_config", {"cpu_sim": {"device_memory": "1536MiB"}})
    return LLM(model=model, **kwargs)
