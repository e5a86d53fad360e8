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
layer. Expert parallelism and routing variants the kernels above do not
express are refused when the model is built, with what is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm.model_executor.layers.fused_moe.activation import MoEActivation
from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
    UnquantizedFusedMoEMethod,
)

from vllm_ascend import npu_ops

if TYPE_CHECKING:
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts


def unsupported_routing(layer: RoutedExperts) -> list[str]:
    """What a layer asks for that the NPU MoE path does not run."""
    moe = layer.moe_config
    checks = {
        f"scoring function {layer.scoring_func!r} (softmax runs)":
            layer.scoring_func != "softmax",
        "grouped top-k routing": bool(layer.use_grouped_topk),
        "a custom routing function": layer.custom_routing_function is not None,
        "an expert score correction bias": layer.e_score_correction_bias is not None,
        f"routed scaling factor {layer.routed_scaling_factor}":
            layer.routed_scaling_factor != 1.0,
        "router weights applied to the input": bool(layer.apply_router_weight_on_input),
        f"activation {layer.activation.value} (silu runs)":
            layer.activation != MoEActivation.SILU,
        "expert biases": bool(moe.has_bias),
        "expert parallelism": bool(moe.moe_parallel_config.use_ep),
    }
    return [what for what, used in checks.items() if used]


class AscendFusedMoEMethod(UnquantizedFusedMoEMethod):
    """vLLM's unquantised MoE weights, run by the NPU's MoE kernels."""

    @property
    def is_monolithic(self) -> bool:
        return True

    @property
    def supports_eplb(self) -> bool:
        return False

    def create_weights(self, layer: RoutedExperts, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype,
                       **extra_weight_attrs) -> None:
        missing = unsupported_routing(layer)
        if missing:
            raise NotImplementedError(
                f"vllm-ascend's MoE layer ({layer.layer_name}) does not support "
                f"{', '.join(missing)}")
        super().create_weights(layer, num_experts, hidden_size,
                               intermediate_size_per_partition, params_dtype,
                               **extra_weight_attrs)

    def process_weights_after_loading(self, layer: RoutedExperts) -> None:
        # vLLM keeps w13 as (experts, 2·intermediate, hidden) and w2 as
        # (experts, hidden, intermediate); the grouped matmul takes
        # (experts, k, n), and reads a transposed view as it is: no copy.
        super().process_weights_after_loading(layer)
        self.w13_kn = layer.w13_weight.transpose(1, 2)
        self.w2_kn = layer.w2_weight.transpose(1, 2)

    def apply_monolithic(self, layer: RoutedExperts, x: torch.Tensor,
                         router_logits: torch.Tensor,
                         input_ids: torch.Tensor | None = None) -> torch.Tensor:
        tokens, top_k = x.shape[0], layer.top_k
        weights, experts, _ = npu_ops.npu_moe_gating_top_k_softmax_v2(
            router_logits, k=top_k, renorm=1 if layer.renormalize else 0)
        expanded, source_rows, per_expert, _ = npu_ops.npu_moe_init_routing_v2(
            x, experts, active_num=tokens * top_k, expert_num=layer.global_num_experts,
            expert_tokens_num_type=1, expert_tokens_num_flag=True, row_idx_type=1)
        (gate_up,) = npu_ops.npu_grouped_matmul(
            [expanded], [self.w13_kn], group_list=per_expert, split_item=2, group_type=0,
            group_list_type=1)
        (down,) = npu_ops.npu_grouped_matmul(
            [npu_ops.npu_swiglu(gate_up, dim=-1)], [self.w2_kn], group_list=per_expert,
            split_item=2, group_type=0, group_list_type=1)
        return npu_ops.npu_moe_token_unpermute(down, source_rows, weights.to(down.dtype))
