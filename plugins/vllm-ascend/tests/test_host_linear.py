"""Emulated bfloat16 linear layers on a host without a native bfloat16 GEMM."""

from __future__ import annotations

import pytest
import torch
from vllm.model_executor.layers.linear import UnquantizedLinearMethod

from vllm_ascend.host_linear import (
    MIN_ROWS,
    WidenedBF16LinearMethod,
    host_has_native_bf16_gemm,
    widen_bf16_products,
)


def _layer(out_features: int, in_features: int, dtype: torch.dtype) -> torch.nn.Module:
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.randn(out_features, in_features).to(dtype),
                                       requires_grad=False)
    module.quant_method = UnquantizedLinearMethod()
    return module


@pytest.mark.parametrize("rows", [1, MIN_ROWS - 1, MIN_ROWS, 300])
def test_widened_product_is_the_npu_arithmetic(rows):
    """float32 accumulation and one rounding to bfloat16, for every row count."""
    gen = torch.Generator().manual_seed(rows)
    layer = _layer(48, 640, torch.bfloat16)
    bias = torch.randn(48, generator=gen).bfloat16()
    x = torch.randn(rows, 640, generator=gen).bfloat16()
    out = WidenedBF16LinearMethod().apply(layer, x, bias)
    exact = x.double() @ layer.weight.double().t() + bias.double()
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 48)
    # one rounding of the float32 sum: within half a bfloat16 step of the exact
    # value (|v| * 2**-8 bounds it); torch's own bfloat16 product of few rows
    # rounds the product and the sum with the bias, twice
    half_step = exact.abs() * 2.0**-8
    bound = half_step if rows >= MIN_ROWS else 2 * half_step
    assert bool(((out.double() - exact).abs() <= bound + 1e-5).all())


def test_only_unquantized_bfloat16_layers_are_widened_and_only_where_needed():
    model = torch.nn.ModuleDict({"bf16": _layer(8, 16, torch.bfloat16),
                                 "fp32": _layer(8, 16, torch.float32),
                                 "other": torch.nn.Linear(16, 8)})
    widened = widen_bf16_products(model)
    native = host_has_native_bf16_gemm()
    assert widened == (0 if native else 1)
    assert type(model["bf16"].quant_method) is (
        UnquantizedLinearMethod if native else WidenedBF16LinearMethod)
    assert type(model["fp32"].quant_method) is UnquantizedLinearMethod
