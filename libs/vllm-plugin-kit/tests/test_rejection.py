"""The rejection sampler's PyTorch forms against vLLM's own Triton kernels.

The reference is not a second reading of the kernels: it is their source, run
by Triton's interpreter (``TRITON_INTERPRET=1``), which executes a kernel's
programs one by one on CPU tensors. The interpreter has to be chosen before
Triton is imported, so the reference runs in a process of its own; vLLM hides
Triton on a machine without a GPU, so there each kernel is rebuilt from its
function with the real ``triton.language`` in its globals.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("triton")

VOCAB = 11
MAX_SPEC = 4
NUM_REQS = 5
SEEDS = range(4)


def _batch(seed: int) -> dict[str, Any]:
    """Five requests with 2, 0, 4, 1 and 3 draft tokens, some padded (-1),
    most equal to the target's argmax so that runs get accepted."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([2, 0, 4, 1, 3])
    n = int(counts.sum())
    logits = torch.randn(n, VOCAB, generator=g)
    argmax = logits.argmax(1)
    draft = torch.where(torch.rand(n, generator=g) < 0.6, argmax,
                        torch.randint(0, VOCAB, (n,), generator=g)).to(torch.int32)
    draft[torch.rand(n, generator=g) < 0.1] = -1
    return dict(
        cu=counts.cumsum(0).to(torch.int32), draft=draft, argmax=argmax,
        bonus=torch.randint(0, VOCAB, (NUM_REQS, 1), generator=g),
        is_greedy=torch.tensor([True, False, False, True, False]),
        uniform=torch.rand(n, generator=g, dtype=torch.float64),
        target_probs=torch.softmax(logits, 1),
        draft_probs=torch.softmax(torch.randn(n, VOCAB, generator=g), 1),
        rates=torch.tensor([0.9, 0.5, 0.3, 0.2]),
        recovered=torch.randint(0, VOCAB, (n,), generator=g, dtype=torch.int32),
        inv_q=torch.empty(NUM_REQS, VOCAB).exponential_(generator=g).reciprocal(),
    )


def _cases() -> dict[str, tuple[str, tuple[int, ...], Any]]:
    """name -> (kernel, grid, builder of (output, args, constexprs))."""
    cases: dict[str, tuple[str, tuple[int, ...], Any]] = {}

    def out() -> torch.Tensor:
        return torch.full((NUM_REQS, MAX_SPEC + 1), -1, dtype=torch.int32)

    for seed in SEEDS:
        b = _batch(seed)
        for synthetic in (False, True):
            for all_greedy in (False, True):
                cases[f"greedy-{seed}-{synthetic}-{all_greedy}"] = (
                    "rejection_greedy_sample_kernel", (NUM_REQS,),
                    lambda b=b, s=synthetic, a=all_greedy: (out(), (
                        b["cu"], b["draft"], b["argmax"], b["bonus"],
                        None if a else b["is_greedy"], MAX_SPEC,
                        b["uniform"] if s else None, b["rates"] if s else None),
                        dict(SYNTHETIC_MODE=s)))
            for with_q in (False, True):
                cases[f"random-{seed}-{synthetic}-{with_q}"] = (
                    "rejection_random_sample_kernel", (NUM_REQS,),
                    lambda b=b, s=synthetic, q=with_q: (out(), (
                        b["cu"], b["draft"], b["draft_probs"] if q else None,
                        b["target_probs"], b["bonus"], b["recovered"], b["uniform"],
                        b["is_greedy"], MAX_SPEC, VOCAB, b["rates"] if s else None),
                        dict(NO_DRAFT_PROBS=not q, SYNTHETIC_MODE=s)))
        for with_q in (False, True):
            cases[f"recovered-{seed}-{with_q}"] = (
                "sample_recovered_tokens_kernel", (NUM_REQS, MAX_SPEC),
                lambda b=b, q=with_q: (torch.full_like(b["draft"], -1), (
                    b["cu"], b["draft"], b["draft_probs"] if q else None, b["target_probs"],
                    b["inv_q"], VOCAB),
                    # two tiles of the vocabulary, as a real vocabulary is many
                    dict(BLOCK_SIZE=8, NO_DRAFT_PROBS=not q, USE_FP64_GUMBEL=False)))
    for dtype in (torch.int32, torch.int64, torch.float32):
        cases[f"expand-{dtype}"] = (
            "expand_kernel", (4,),
            lambda d=dtype: (torch.zeros(6, dtype=d), (
                torch.tensor([3, 0, 7, 0], dtype=d), torch.tensor([2, 2, 5, 6],
                                                                  dtype=torch.int32), 0, 9),
                dict(MAX_NUM_TOKENS=MAX_SPEC)))
    return cases


def _interpreted_outputs() -> dict[str, list[Any]]:
    """Every case through vLLM's kernel in Triton's interpreter (run in a
    process where TRITON_INTERPRET was set before Triton was imported)."""
    import triton
    import triton.language as tl
    from vllm.v1.sample import rejection_sampler

    results = {}
    for name, (kernel_name, grid, build) in _cases().items():
        fn = getattr(rejection_sampler, kernel_name)
        fn = getattr(fn, "fn", getattr(fn, "func", fn))
        plain = types.FunctionType(fn.__code__, {**fn.__globals__, "tl": tl, "triton": triton},
                                   fn.__name__, fn.__defaults__, fn.__closure__)
        plain.__module__, plain.__qualname__ = fn.__module__, fn.__qualname__
        out, args, constexprs = build()
        triton.jit(plain)[grid](out, *args, **constexprs)
        results[name] = out.tolist()
    return results


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    path = tmp_path_factory.mktemp("rejection") / "reference.pt"
    code = (f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "import test_rejection as t; "
            f"torch.save(t._interpreted_outputs(), {str(path)!r})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(path)


@pytest.mark.parametrize("case", list(_cases()))
def test_form_equals_vllms_kernel(case: str, interpreted: dict[str, list[Any]]):
    from vllm_plugin_kit import rejection

    kernel_name, _, build = _cases()[case]
    form = rejection.OVERRIDES[f"vllm.v1.sample.rejection_sampler.{kernel_name}"]
    out, args, constexprs = build()
    form(out, *args, **constexprs)
    assert out.tolist() == interpreted[case]
    if kernel_name != "expand_kernel":
        assert (out >= 0).any(), "the case wrote nothing to compare"


def test_forms_replace_the_kernels_vllm_launches():
    """Registered, the forms are what vLLM's rejection sampler calls."""
    from vllm.v1.sample import rejection_sampler
    from vllm_plugin_kit.kernels import register_overrides

    register_overrides()
    cu = torch.tensor([2, 3], dtype=torch.int32)
    out = rejection_sampler.expand_batch_to_tokens(torch.tensor([5, 0]), cu, 3,
                                                   replace_from=0, replace_to=1)
    assert out.tolist() == [5, 5, 1]
