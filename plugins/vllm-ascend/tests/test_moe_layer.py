"""One MoE layer on the NPU's MoE kernels (emulated) against the formula written
out, whole and split by expert parallelism: each rank runs its range of
experts and the ranks' outputs sum to the layer's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from vllm.model_executor.layers.fused_moe.expert_map_manager import determine_expert_map

from vllm_ascend import npu_ops
from vllm_ascend.moe import local_expert_range, routed_experts

EXPERTS, TOP_K, HIDDEN, INTER = 8, 2, 16, 12


def _layer(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, HIDDEN, generator=g)
    logits = torch.randn(7, EXPERTS, generator=g)
    # vLLM's layouts: w13 (experts, 2·intermediate, hidden) gate then up,
    # w2 (experts, hidden, intermediate)
    w13 = torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=g) / math.sqrt(HIDDEN)
    w2 = torch.randn(EXPERTS, HIDDEN, INTER, generator=g) / math.sqrt(INTER)
    return x, logits, w13, w2


def _formula(x, logits, w13, w2, renormalize: bool) -> torch.Tensor:
    """Token by token: the top-k experts' SwiGLU MLPs, weighted by the router."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        probs = torch.softmax(logits[t], dim=-1)
        top = sorted(range(EXPERTS), key=lambda e: -float(logits[t, e]))[:TOP_K]
        total = sum(float(probs[e]) for e in top)
        for e in top:
            weight = float(probs[e]) / (total if renormalize else 1.0)
            gate, up = (w13[e] @ x[t]).chunk(2)
            out[t] += weight * (w2[e] @ (F.silu(gate) * up))
    return out


def _run(x, logits, w13, w2, renormalize, expert_range=None):
    start, end = expert_range or (0, EXPERTS)
    return routed_experts(x, logits, w13[start:end].transpose(1, 2),
                          w2[start:end].transpose(1, 2), top_k=TOP_K,
                          renormalize=renormalize, num_experts=EXPERTS,
                          expert_range=expert_range)


@pytest.mark.parametrize("renormalize", [True, False])
def test_whole_layer_equals_the_formula(renormalize: bool) -> None:
    x, logits, w13, w2 = _layer()
    torch.testing.assert_close(_run(x, logits, w13, w2, renormalize),
                               _formula(x, logits, w13, w2, renormalize),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("renormalize", [True, False])
def test_expert_parallel_ranks_sum_to_the_layer(ranks: int, renormalize: bool) -> None:
    x, logits, w13, w2 = _layer(seed=ranks)
    whole = _formula(x, logits, w13, w2, renormalize)
    parts = []
    for rank in range(ranks):
        _, expert_map, _ = determine_expert_map(ranks, rank, EXPERTS, "linear")
        expert_range = local_expert_range(expert_map)
        assert expert_range is not None
        parts.append(_run(x, logits, w13, w2, renormalize, expert_range))
    # no rank's part is the whole or nothing: the split is real
    assert all(not torch.allclose(p, whole, atol=1e-3) for p in parts)
    torch.testing.assert_close(sum(parts), whole, rtol=1e-5, atol=1e-5)


def _poison(name, kernel, args, kwargs):
    """The grouped matmuls' rows past the kept choices, undefined on the NPU, as NaN."""
    out = kernel(*args, **kwargs)
    if name == "npu_grouped_matmul":
        group_list = kwargs["group_list"]
        used = group_list.sum() if kwargs["group_list_type"] == 1 else group_list[-1]
        out[0][int(used):] = float("nan")
    return out


@pytest.fixture
def undefined_rows_poisoned():
    npu_ops.set_launch_hook(_poison)
    yield
    npu_ops.set_launch_hook(None)


def test_one_expert_per_rank_runs_in_a_form_the_grouped_matmul_takes() -> None:
    """With as many expert-parallel ranks as experts each rank's grouped matmul
    has one group, which the kernel refuses as group sizes; the layer passes
    the running sum."""
    x, logits, w13, w2 = _layer(seed=5)
    parts = [_run(x, logits, w13, w2, True, (e, e + 1)) for e in range(EXPERTS)]
    torch.testing.assert_close(sum(parts), _formula(x, logits, w13, w2, True),
                               rtol=1e-5, atol=1e-5)


def test_rows_the_kernels_leave_undefined_never_reach_the_output(
        undefined_rows_poisoned) -> None:
    x, logits, w13, w2 = _layer()
    parts = [_run(x, logits, w13, w2, True, r) for r in ((0, 4), (4, 8))]
    torch.testing.assert_close(parts[0] + parts[1], _formula(x, logits, w13, w2, True),
                               rtol=1e-5, atol=1e-5)


def test_a_rank_whose_experts_nobody_chose_adds_nothing(undefined_rows_poisoned) -> None:
    x, logits, w13, w2 = _layer()
    logits[:, 4:] -= 100.0  # every token picks among experts 0..3: all rows undefined
    out = _run(x, logits, w13, w2, True, (4, 8))
    assert torch.equal(out, torch.zeros_like(out))


def test_local_expert_range_accepts_linear_placement_only() -> None:
    assert local_expert_range(determine_expert_map(2, 1, EXPERTS, "linear")[1]) == (4, 8)
    assert local_expert_range(determine_expert_map(3, 2, EXPERTS, "linear")[1]) == (6, 8)
    # round robin: experts 1, 3, 5, 7 on rank 1
    assert local_expert_range(determine_expert_map(2, 1, EXPERTS, "round_robin")[1]) is None
    assert local_expert_range(torch.full((EXPERTS,), -1, dtype=torch.int32)) is None
    # contiguous but out of order
    shuffled = torch.tensor([-1, -1, 1, 0, -1, -1, -1, -1], dtype=torch.int32)
    assert local_expert_range(shuffled) is None
