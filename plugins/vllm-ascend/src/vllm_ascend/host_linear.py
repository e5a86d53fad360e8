"""Emulated NPU: bfloat16 linear layers on a host without a native bfloat16 GEMM.

The NPU's Cube unit multiplies bfloat16 operands with float32 accumulation and
rounds each result once. torch's CPU GEMM does the same arithmetic, natively
through oneDNN where the CPU has AVX-512 BF16 or AMX, otherwise in a scalar
fallback (e.g. AMD Zen 3): there a bfloat16 product of 32 or more rows takes
3-6x the time of the float32 one. Emulation on such a host widens those
products to float32 and rounds the result back: the same numbers, sooner.
Decode steps of a few rows keep the fallback, which is as fast there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from vllm.model_executor.layers.linear import UnquantizedLinearMethod

#: Fewer rows than this keep the bfloat16 product (as fast, no widened copy).
MIN_ROWS = 16


def host_has_native_bf16_gemm() -> bool:
    """Whether torch multiplies bfloat16 through oneDNN on this CPU."""
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class WidenedBF16LinearMethod(UnquantizedLinearMethod):
    """vLLM's unquantized method, its bfloat16 products of many rows in float32."""

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.numel() < MIN_ROWS * x.shape[-1]:
            return super().apply(layer, x, bias)
        wide_bias = None if bias is None else bias.float()
        return F.linear(x.float(), layer.weight.float(), wide_bias).to(x.dtype)


def widen_bf16_products(model: torch.nn.Module) -> int:
    """Give each unquantized bfloat16 linear layer of ``model`` the widened
    method where the host lacks a native bfloat16 GEMM; returns how many."""
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
