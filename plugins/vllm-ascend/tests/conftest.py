"""Shared fixtures of the plugin's own tests: NPU emulation selected, the default
model, its transformers model, and one engine per configuration for the
session (pinned to one pytest-xdist worker through an ``xdist_group``; run with
``--dist loadgroup``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No NPU here: the plugin runs emulated, and only it (vLLM-cpu-sim, active by
# default, may be installed too).
os.environ["VLLM_ASCEND_EMULATE"] = "1"
os.environ["VLLM_PLUGINS"] = "ascend"
# Lets tests pass functions to collective_rpc to inspect the workers.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
# The engines' core runs in the test's process: a core process of its own
# imports vLLM again (15-20 s of a core per engine). The worker, runner and
# scheduler are the same either way; tensor parallelism's workers still run apart.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# Two cores shared by two xdist workers: one thread per engine and per test
# process (the references run here). Two OpenMP threads in each of two busy
# processes spin at each other's barriers: the W8A8 references took 8x longer.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("VLLM_ASCEND_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # read when torch loads

sys.path.insert(0, str(Path(__file__).parent))

from npu_schemas import through_schemas

from vllm_ascend import npu_ops
from vllm_harness.fixtures import (  # noqa: F401
    engines,
    hf_model,
    model_dir,
    tiny_model_dir,
)

# Every emulated NPU call in this process (unit tests and the engines whose core
# runs here) goes through the schema torch_npu's library registers for the op.
npu_ops.route(through_schemas)


def make_llm(model: str, **kwargs):
    from vllm import LLM

    kwargs.setdefault("max_model_len", 512)
    kwargs.setdefault("additional_config", {"ascend": {"device_memory": "1536MiB"}})
    return LLM(model=model, **kwargs)


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


def hf_greedy_batched(hf: tuple, prompts: list[str], n: int) -> list[list[int]]:
    """transformers' greedy continuations of ``prompts``, one batch a step.

    Left-padded and masked, positions counted from each prompt's first token: the
    same math as one prompt at a time, with the weights read once a step instead
    of once a prompt (what a reference in float64 is bound by).
    """
    import torch

    tokenizer, model = hf
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = batch.input_ids, batch.attention_mask
    out: list[list[int]] = [[] for _ in prompts]
    past = None
    with torch.no_grad():
        for _ in range(n):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
            result = model(ids, attention_mask=mask, position_ids=positions,
                           past_key_values=past, use_cache=True)
            past = result.past_key_values
            ids = result.logits[:, -1].argmax(-1, keepdim=True)
            for row, token in zip(out, ids.flatten().tolist(), strict=True):
                row.append(token)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
    return out
