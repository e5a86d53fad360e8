"""Mixture-of-experts layers on the NPU's MoE kernels.

vLLM hands an out-of-tree platform's MoE layers to ``UnquantizedFusedMoEMethod``
and leaves the kernels to it. :class:`AscendFusedMoEMethod` takes its place
(``CustomOp.register_oot``) and is *monolithic*: it gets the router logits
and runs the whole layer as six NPU ops, with no loop over experts and no
host synchronisation:

1. ``npu_moe_gating_top_k_softmax_v2``: each token's top-k experts and their
   weights (``renorm=1`` when the model renormalises the k weights);
2. ``npu_moe_init_routing_v2``: each token copied once per chosen expert,
   the copies grouped by expert, with the tokens per expert;
3. ``npu_grouped_matmul``: every expert's gate and up projection at once;
4. ``npu_swiglu``;
5. ``npu_grouped_matmul``: every expert's down projection;
6. ``npu_moe_token_unpermute``: the k outputs of each token summed back,
   weighted by the routing weights.

Tensor parallelism shards each expert's intermediate dimension (vLLM's
default for MoE); the runner all-reduces the partial sums, as for any MoE
layer. Expert parallelism (``--enable-expert-parallel`` over the
tensor-parallel ranks) gives each rank a contiguous range of whole experts
instead: the routing keeps only the choices of that range
(``active_expert_range``), the two grouped matmuls run the local experts,
and each token's kept outputs are gathered back through the routing's
gather index, a dropped choice adding nothing; the runner's all-reduce then
sums the ranks' partial outputs, as with tensor parallelism. With data
parallelism the expert ranks span the data-parallel ranks too: vLLM's runner
hands each layer the tokens of every data-parallel rank (the communicator's
``dispatch_router_logits``, an all-gather) and gives each rank the sums for its
own tokens back (``combine``, a reduce-scatter). Routing variants
the kernels above do not express, and expert placements that are not one
contiguous range per rank, are refused when the model is built, with what is
missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm_plugin_kit import moe as kit_moe

from vllm_ascend import get_logger, npu_ops

logger = get_logger(__name__)

if TYPE_CHECKING:
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts


def unsupported_routing(layer: RoutedExperts) -> list[str]:
    """What a layer asks for that the NPU MoE path does not run: the routing
    the kit's host form runs too (:func:`vllm_plugin_kit.moe.unsupported_routing`),
    with expert parallelism over one contiguous range of experts per rank."""
    missing = kit_moe.unsupported_routing(layer)
    if layer.expert_map is not None and local_expert_range(layer.expert_map) is None:
        missing.append(f"expert placement {layer.expert_placement_strategy!r} (each rank "
                       "runs one contiguous range of experts: 'linear')")
    return missing


def local_expert_range(expert_map: torch.Tensor) -> tuple[int, int] | None:
    """[start, end) of the global experts this rank holds, when they are one
    contiguous range in order (vLLM's "linear" placement); None otherwise.

    ``expert_map[e]`` is expert e's local index on this rank, -1 elsewhere.
    Read once when the model is built, never inside a step.
    """
    local = torch.nonzero(expert_map >= 0).flatten()
    if local.numel() == 0:
        return None
    start, end = int(local[0]), int(local[-1]) + 1
    expected = torch.arange(end - start, dtype=expert_map.dtype)
    if local.numel() != end - start or not torch.equal(expert_map[start:end].cpu(), expected):
        return None
    return start, end


def routed_experts(x: torch.Tensor, router_logits: torch.Tensor, w13_kn: torch.Tensor,
                   w2_kn: torch.Tensor, *, top_k: int, renormalize: bool, num_experts: int,
                   expert_range: tuple[int, int] | None = None) -> torch.Tensor:
    """One MoE layer's routed output on the NPU's MoE kernels.

    ``w13_kn`` (experts, hidden, 2·intermediate) and ``w2_kn`` (experts,
    intermediate, hidden) hold the experts of ``expert_range`` ([start, end) of
    ``num_experts``; all of them when None). With a range, the output is this
    rank's part: the sum over ranks is the whole layer.
    """
    tokens = x.shape[0]
    weights, experts, _ = npu_ops.npu_moe_gating_top_k_softmax_v2(
        router_logits, k=top_k, renorm=1 if renormalize else 0)
    # row_idx_type=0: rows[t·K + j] is the expanded row of token t's j-th
    # choice (-1 when another rank holds that expert); per_expert: the tokens
    # of each local expert (the kernel gives counts, expert_tokens_num_type=1)
    expanded, rows, per_expert, _ = npu_ops.npu_moe_init_routing_v2(
        x, experts, active_num=tokens * top_k, expert_num=num_experts,
        expert_tokens_num_type=1, expert_tokens_num_flag=True,
        active_expert_range=list(expert_range) if expert_range is not None else [],
        row_idx_type=0)
    # the grouped matmul takes counts of two groups or more; one local expert's
    # group goes as the running sum
    if per_expert.numel() == 1:
        group_list, group_list_type = per_expert.cumsum(0), 0
    else:
        group_list, group_list_type = per_expert, 1
    (gate_up,) = npu_ops.npu_grouped_matmul(
        [expanded], [w13_kn], group_list=group_list, split_item=2, group_type=0,
        group_list_type=group_list_type)
    (down,) = npu_ops.npu_grouped_matmul(
        [npu_ops.npu_swiglu(gate_up, dim=-1)], [w2_kn], group_list=group_list,
        split_item=2, group_type=0, group_list_type=group_list_type)
    if expert_range is None:
        # every choice is kept: rows is a permutation, the unpermute's gather index
        return npu_ops.npu_moe_token_unpermute(down, rows, weights.to(down.dtype))
    # The kernels leave the rows past the kept ones undefined, so a dropped
    # choice is selected away, never multiplied by zero.
    kept = (rows >= 0).unsqueeze(-1)
    chosen = torch.where(kept, down.index_select(0, rows.clamp(min=0).long()),
                         down.new_zeros(()))
    weighted = chosen.float().view(tokens, top_k, -1) * weights.float().unsqueeze(-1)
    return weighted.sum(dim=1).to(down.dtype)

class AscendFusedMoEMethod(kit_moe.HostFusedMoEMethod):
    """vLLM's unquantised MoE weights, run by the NPU's MoE kernels."""

    OWNER = "vllm-ascend's"

    def unsupported(self, layer: RoutedExperts) -> list[str]:
        return unsupported_routing(layer)

    def process_weights_after_loading(self, layer: RoutedExperts) -> None:
        # vLLM keeps w13 as (experts, 2·intermediate, hidden) and w2 as
        # (experts, hidden, intermediate); the grouped matmul takes
        # (experts, k, n), and reads a transposed view as it is: no copy.
        super().process_weights_after_loading(layer)
        self.w13_kn = layer.w13_weight.transpose(1, 2)
        self.w2_kn = layer.w2_weight.transpose(1, 2)
        self.expert_range = (None if layer.expert_map is None
                             else local_expert_range(layer.expert_map))
        if self.expert_range is not None:
            # every rank's own range, not only the first local rank's
            logger.info_once("vllm-ascend: MoE layers hold experts [%d, %d) of %d",
                             *self.expert_range, layer.global_num_experts, scope="process")

    def apply_monolithic(self, layer: RoutedExperts, x: torch.Tensor,
                         router_logits: torch.Tensor,
                         input_ids: torch.Tensor | None = None) -> torch.Tensor:
        return routed_experts(x, router_logits, self.w13_kn, self.w2_kn, top_k=layer.top_k,
                              renormalize=layer.renormalize,
                              num_experts=layer.global_num_experts,
                              expert_range=self.expert_range)
