"""Mixture-of-experts layers in plain PyTorch, for a device stood in for on the host.

vLLM hands an out-of-tree platform's MoE layers to ``UnquantizedFusedMoEMethod``
and leaves the kernels to the platform. :class:`HostFusedMoEMethod` takes its
place (``CustomOp.register_oot``, see :func:`register`) and is *monolithic*: it
gets the router logits and runs the whole layer: softmax top-k routing (the k
weights renormalised when the model asks), each token's copies grouped by
expert, every expert's gate/up product, SiLU-and-multiply, down product, and
the k outputs summed back with their weights in float32.

One loop runs over the experts that received tokens (a host program, so the
one synchronisation that counts them costs nothing); tensor parallelism shards
each expert's intermediate dimension and vLLM's runner all-reduces the partial
sums, as for any MoE layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from vllm.model_executor.layers.fused_moe.activation import MoEActivation
from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
    UnquantizedFusedMoEMethod,
)

if TYPE_CHECKING:
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts


def unsupported_routing(layer: RoutedExperts) -> list[str]:
    """What a layer asks for beyond softmax top-k routing to SiLU experts."""
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
    }
    return [what for what, used in checks.items() if used]


def routed_experts(x: torch.Tensor, router_logits: torch.Tensor, w13: torch.Tensor,
                   w2: torch.Tensor, *, top_k: int, renormalize: bool) -> torch.Tensor:
    """One MoE layer's routed output: ``w13`` (experts, 2·intermediate, hidden),
    ``w2`` (experts, hidden, intermediate), vLLM's layouts."""
    tokens, hidden = x.shape
    weights, experts = torch.topk(torch.softmax(router_logits.float(), dim=-1), top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    flat = experts.flatten()
    order = torch.argsort(flat, stable=True)  # copies grouped by expert
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()
    inputs = x.index_select(0, order // top_k)
    outputs = torch.empty(tokens * top_k, hidden, dtype=torch.float32, device=x.device)
    start = 0
    for expert, count in enumerate(counts):
        if count:
            rows = slice(start, start + count)
            gate_up = inputs[rows] @ w13[expert].t()
            outputs[rows] = (F.silu(gate_up[:, : gate_up.shape[1] // 2])
                             * gate_up[:, gate_up.shape[1] // 2:]) @ w2[expert].t()
            start += count
    chosen = torch.empty_like(outputs).index_copy_(0, order, outputs)
    summed = (chosen.view(tokens, top_k, hidden) * weights.unsqueeze(-1)).sum(dim=1)
    return summed.to(x.dtype)


class HostFusedMoEMethod(UnquantizedFusedMoEMethod):
    """vLLM's unquantised MoE weights, run by :func:`routed_experts`. A device's
    MoE kernels subclass it: their own :meth:`unsupported`, weights and
    ``apply_monolithic``, the same monolithic contract and refusal."""

    #: how refusals name the layer's owner
    OWNER: ClassVar[str] = "the host"

    def unsupported(self, layer: RoutedExperts) -> list[str]:
        """What ``layer`` asks for that this method does not run."""
        return unsupported_routing(layer) + (
            ["expert parallelism"] if layer.expert_map is not None else [])

    @property
    def is_monolithic(self) -> bool:
        return True

    @property
    def supports_eplb(self) -> bool:
        return False

    def create_weights(self, layer: RoutedExperts, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype,
                       **extra_weight_attrs) -> None:
        missing = self.unsupported(layer)
        if missing:
            raise NotImplementedError(f"{self.OWNER} MoE layer ({layer.layer_name}) does not "
                                      f"support {', '.join(missing)}")
        super().create_weights(layer, num_experts, hidden_size,
                               intermediate_size_per_partition, params_dtype,
                               **extra_weight_attrs)

    def apply_monolithic(self, layer: RoutedExperts, x: torch.Tensor,
                         router_logits: torch.Tensor,
                         input_ids: torch.Tensor | None = None) -> torch.Tensor:
        return routed_experts(x, router_logits, layer.w13_weight, layer.w2_weight,
                              top_k=layer.top_k, renormalize=layer.renormalize)


def register() -> None:
    """Put the host MoE method in vLLM's out-of-tree registry (idempotent)."""
    from vllm.model_executor.custom_op import op_registry_oot

    if "UnquantizedFusedMoEMethod" not in op_registry_oot:
        UnquantizedFusedMoEMethod.register_oot(HostFusedMoEMethod,
                                               name="UnquantizedFusedMoEMethod")
