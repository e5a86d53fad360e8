"""Shared fixtures of the plugin's own tests: the default model, its transformers
model, and one engine per configuration for the whole session (pinned to one
pytest-xdist worker through an ``xdist_group`` of the same name; run with
``--dist loadgroup``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Select this platform (vllm-cpu-sim, active by default, may be installed too).
os.environ["VLLM_PLUGINS"] = "spyre_like"
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))

from vllm_harness.fixtures import (  # noqa: F401
    hf_model,
    model_dir,
    tiny_model_dir,
)

#: The warmup shape of the engine tests: prompts up to 64 tokens, 20 new, 4 at a time.
SHAPES = [[64, 20, 4]]


def compile_stats(llm) -> dict:
    (stats,) = llm.collective_rpc("compile_stats")
    return stats


def hf_greedy(hf: tuple, prompt: str, n: int) -> list[int]:
    """transformers' greedy continuation of ``prompt`` (``hf``: the hf_model fixture)."""
    import torch

    tokenizer, model = hf
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out: list[int] = []
    past = None
    with torch.no_grad():
        for _ in range(n):
            result = model(ids, past_key_values=past, use_cache=True)
            past = result.past_key_values
            out.append(int(result.logits[0, -1].argmax()))
            ids = torch.tensor([[out[-1]]])
    return out
