"""bfloat16 linear layers of the CPU stand-in, on a host without a native bfloat16 GEMM.

torch's CPU GEMM takes bfloat16 through oneDNN only where the CPU has AVX-512
BF16 or AMX; elsewhere (an AVX2-only AMD EPYC, say) it falls back to a kernel
that took 4 times as long for a 64-row product of the default model's MLP as
the widened float32 one below, and the static profile pads prefills to 64-1024
tokens. On such a host the products of 4 rows or more are widened to float32
and rounded back once: float32 accumulation and one rounding, what the bfloat16
GEMM computes anyway (the sums merely come in another order). A device build
runs its own kernels and has no use for this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from vllm.model_executor.layers.linear import UnquantizedLinearMethod

#: Fewer rows than this keep torch's bfloat16 product (faster for one row: no
#: widened copy of the weight).
MIN_ROWS = 4


def host_has_native_bf16_gemm() -> bool:
    """Whether torch multiplies bfloat16 through oneDNN on this CPU."""
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class WidenedBF16LinearMethod(UnquantizedLinearMethod):
    """vLLM's unquantized method with its bfloat16 products of many rows in float32."""

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.numel() < MIN_ROWS * x.shape[-1]:
            return super().apply(layer, x, bias)
        wide_bias = None if bias is None else bias.float()
        return F.linear(x.float(), layer.weight.float(), wide_bias).to(x.dtype)


def widen_bf16_products(model: torch.nn.Module) -> int:
    """Give each unquantized bfloat16 linear layer of ``model`` the widened method
    where the host lacks a native bfloat16 GEMM; returns how many layers."""
    if host_has_native_bf16_gemm():
        return 0
    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (type(getattr(module, "quant_method", None)) is UnquantizedLinearMethod
                and isinstance(weight, torch.Tensor) and weight.dtype == torch.bfloat16):
            module.quant_method = WidenedBF16LinearMethod()
            count += 1
    return count
