"""The host MoE layer against a token-by-token mixture of experts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from vllm_plugin_kit.moe import routed_experts

EXPERTS, HIDDEN, INTER, TOP_K = 6, 16, 8, 2


def _by_token(x, logits, w13, w2, renormalize):
    """Each token through its k best experts by softmax weight, one at a time."""
    out = []
    for token, scores in zip(x, torch.softmax(logits, -1)):
        weights, chosen = scores.topk(TOP_K)
        if renormalize:
            weights = weights / weights.sum()
        total = torch.zeros(HIDDEN)
        for weight, e in zip(weights, chosen):
            gate, up = (w13[e] @ token).chunk(2)
            total += weight * (w2[e] @ (F.silu(gate) * up))
        out.append(total)
    return torch.stack(out)


@pytest.mark.parametrize("renormalize", [False, True])
def test_routed_experts_equal_a_token_by_token_mixture(renormalize):
    torch.manual_seed(0)
    x = torch.randn(11, HIDDEN)
    logits = torch.randn(11, EXPERTS)
    logits[:, 5] = -30  # an expert no token picks
    w13, w2 = torch.randn(EXPERTS, 2 * INTER, HIDDEN), torch.randn(EXPERTS, HIDDEN, INTER)
    got = routed_experts(x, logits, w13, w2, top_k=TOP_K, renormalize=renormalize)
    torch.testing.assert_close(got, _by_token(x, logits, w13, w2, renormalize),
                               atol=1e-4, rtol=1e-4)
