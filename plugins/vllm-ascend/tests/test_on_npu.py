"""On a real NPU: torch_npu's kernels (and the plugin's own) against the references.

Each op's check in test_npu_ops.py is run once emulated while every
successful NPU-op call it makes is recorded (inputs, outputs, and inputs the
op writes to); each recorded call is then replayed through torch_npu on the
NPU and its results compared with the reference's. Runs only where torch_npu
imports and sees an NPU; elsewhere every test is skipped with the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from test_npu_ops import CHECKS

from vllm_ascend import _npu_visible, emulation, npu_ops

VISIBLE, WHY = _npu_visible()
pytestmark = [pytest.mark.npu,
              pytest.mark.skipif(not VISIBLE, reason=f"needs an NPU: {WHY}")]

#: how far a kernel may be from the float32 reference, by output dtype
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@contextmanager
def recording() -> Iterator[list[tuple[str, tuple, dict, Any, tuple, dict]]]:
    """Record (op, args, kwargs, outputs, args after, kwargs after) of every
    emulated NPU-op call that returns."""
    calls: list[tuple[str, tuple, dict, Any, tuple, dict]] = []
    original: Callable[[str], Callable[..., Any]] = npu_ops._target

    def target(name: str) -> Callable[..., Any]:
        reference = emulation.REFERENCES[name]

        def recorded(*args: Any, **kwargs: Any) -> Any:
            before = copy.deepcopy((args, kwargs))
            result = reference(*args, **kwargs)
            calls.append((name, *before, copy.deepcopy(result), *copy.deepcopy((args, kwargs))))
            return result

        return recorded

    npu_ops.select(emulated=True)
    npu_ops._target = target
    try:
        yield calls
    finally:
        npu_ops._target = original
        npu_ops.select(emulated=True)


def _to_npu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to("npu")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_npu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_npu(v) for k, v in value.items()}
    return value


def _same(got: Any, want: Any, where: str) -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        got = got.cpu()
        assert got.shape == want.shape and got.dtype == want.dtype, where
        if want.is_floating_point():
            tol = TOLERANCE.get(want.dtype, 1e-4)
            torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol,
                                       msg=where)
        else:
            assert torch.equal(got, want), where
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{i}]")


@pytest.mark.parametrize("op", sorted(emulation.REFERENCES))
def test_kernel_equals_reference(op: str) -> None:
    with recording() as calls:
        CHECKS[op]()
    calls = [c for c in calls if c[0] == op]
    assert calls, f"the check of {op} made no successful call to record"
    npu_ops.select(emulated=False)
    try:
        for i, (name, args, kwargs, outputs, args_after, kwargs_after) in enumerate(calls):
            npu_args, npu_kwargs = _to_npu(args), _to_npu(kwargs)
            result = getattr(npu_ops, name.split(".")[0])
            if "." in name:
                result = result.out
            got = result(*npu_args, **npu_kwargs)
            _same(got, outputs, f"{name} call {i}: outputs")
            # what the op writes in place (caches, out= buffers)
            _same(list(npu_args), list(args_after), f"{name} call {i}: arguments after")
            for key in kwargs_after:
                _same(npu_kwargs[key], kwargs_after[key], f"{name} call {i}: {key} after")
    finally:
        npu_ops.select(emulated=True)


def test_native_rotary_kernel_equals_reference() -> None:
    from vllm_ascend import native

    if not native.load():
        pytest.skip("vllm-ascend was installed without its native kernels (no CANN at build)")
    tokens, head_size, rot, max_pos = 9, 128, 64, 64
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    angles = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]
    cache = torch.cat((angles.cos(), angles.sin()), -1)
    positions = torch.randint(0, max_pos, (tokens,))
    for dtype in (torch.float16, torch.bfloat16):
        qkv = torch.randn(tokens, 12 * head_size).to(dtype)
        query, key = qkv[:, : 8 * head_size], qkv[:, 8 * head_size:]
        want = emulation.npu_mrope(positions, query.contiguous(), key.contiguous(),
                                   cache.to(dtype), head_size)
        npu_qkv = qkv.to("npu")
        q, k = npu_qkv[:, : 8 * head_size], npu_qkv[:, 8 * head_size:]
        native.rotary_embedding(positions.to("npu"), q, k, head_size, cache.to(dtype).to("npu"),
                                True)
        _same((q, k), want, f"rotary_embedding {dtype}")


ENGINE_RUN = r"""
import json, sys
from transformers import AutoTokenizer
from vllm import LLM
from vllm.platforms import current_platform
from vllm_harness.agreement import llm_top1_agreement

model, greedy = sys.argv[1], json.loads(sys.argv[2])
llm = LLM(model=model, dtype="bfloat16", max_model_len=512)
rate = llm_top1_agreement(llm, AutoTokenizer.from_pretrained(model), greedy)
print(json.dumps({"platform": type(current_platform).__name__, "agreement": rate}))
"""


def test_device_engine_agrees_with_transformers(model_dir, hf_model) -> None:
    """vLLM on the NPU itself (its worker, model runner and kernels), bfloat16,
    held to the conformance suite's 16-bit criterion against transformers
    float32 (top-1 agreement on teacher-forced positions)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import hf_greedy

    from vllm_harness.agreement import MIN_AGREEMENT
    from vllm_harness.fixtures import MAX_TOKENS, PROMPTS

    greedy = [hf_greedy(hf_model, prompt, MAX_TOKENS) for prompt in PROMPTS]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ASCEND_EMULATE"}
    result = subprocess.run([sys.executable, "-c", ENGINE_RUN, model_dir, json.dumps(greedy)],
                            capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["platform"] == "NPUPlatform"
    assert report["agreement"] >= MIN_AGREEMENT
