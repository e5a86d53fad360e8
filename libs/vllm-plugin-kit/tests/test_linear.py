"""Host linear layers: the packed oneDNN product and the widened bfloat16 one."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 32, 300])
def test_packed_linear_matches_plain_math(dtype, rows):
    from vllm_plugin_kit.linear import pack_weight, packed_linear

    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(40, 24, generator=gen).to(dtype)
    bias = torch.randn(40, generator=gen).to(dtype)
    # a non-contiguous 3-D input: the transpose of [24, rows, 2]
    x = torch.randn(24, rows, 2, generator=gen).to(dtype).permute(1, 2, 0)
    out = packed_linear(x, pack_weight(weight), 40, bias)
    expected = x.double() @ weight.double().t() + bias.double()
    assert out.shape == (rows, 2, 40) and out.dtype == dtype
    tol = {"atol": 1e-4, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.1, "rtol": 0.02}
    torch.testing.assert_close(out.double(), expected, **tol)


def test_pack_model_swaps_methods_and_keeps_shared_weights():
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm_plugin_kit.linear import PackedLinearMethod, pack_model

    def layer(weight: torch.nn.Parameter) -> torch.nn.Module:
        module = torch.nn.Module()
        module.weight = weight
        module.quant_method = UnquantizedLinearMethod()
        return module

    own = torch.nn.Parameter(torch.randn(16, 8), requires_grad=False)
    shared = torch.nn.Parameter(torch.randn(12, 8), requires_grad=False)
    model = torch.nn.ModuleDict({"own": layer(own), "tied": layer(shared),
                                 "embed": torch.nn.Embedding(12, 8)})
    model["embed"].weight = shared
    x = torch.randn(5, 8)
    expected = {"own": x @ own.t(), "tied": x @ shared.t()}
    assert pack_model(model) == 2
    for name in ("own", "tied"):
        module = model[name]
        assert type(module.quant_method) is PackedLinearMethod
        torch.testing.assert_close(module.quant_method.apply(module, x), expected[name])
    assert model["own"].weight.numel() == 0  # the packed copy replaced it
    assert model["tied"].weight is shared  # still read by the embedding


def test_bfloat16_packs_natively_or_widened():
    """oneDNN's bfloat16 reorder raises on an AVX2-only CPU: there the weight is
    packed as float32, and the layer still takes and returns bfloat16."""
    from vllm_plugin_kit.linear import pack_weight, packed_linear, packs

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 24, generator=gen).bfloat16()
    bias = torch.randn(40, generator=gen).bfloat16()
    x = torch.randn(9, 24, generator=gen).bfloat16()
    packed = pack_weight(weight)
    assert packed.dtype == (torch.bfloat16 if packs(torch.bfloat16) else torch.float32)
    out = packed_linear(x, packed, 40, bias)
    assert out.dtype == torch.bfloat16
    expected = x.double() @ weight.double().t() + bias.double()
    # float32 accumulation: within one bfloat16 rounding of the exact product
    torch.testing.assert_close(out.double(), expected, atol=0.05, rtol=0.01)


# ---------------------------------------------------------------- widened bfloat16

def _linear_layer(out_features: int, in_features: int, dtype: torch.dtype) -> torch.nn.Module:
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.randn(out_features, in_features).to(dtype),
                                       requires_grad=False)
    module.quant_method = UnquantizedLinearMethod()
    return module


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 300])
def test_widened_bfloat16_product_rounds_once(rows):
    """float32 accumulation and one rounding to bfloat16, as the bfloat16 GEMM."""
    from vllm_plugin_kit.linear import MIN_ROWS, WidenedBF16LinearMethod

    gen = torch.Generator().manual_seed(rows)
    layer = _linear_layer(48, 640, torch.bfloat16)
    bias = torch.randn(48, generator=gen).bfloat16()
    x = torch.randn(rows, 640, generator=gen).bfloat16()
    entered = []

    @contextmanager
    def around():
        entered.append(rows)
        yield

    out = WidenedBF16LinearMethod(around).apply(layer, x, bias)
    # the context is around the widened products only
    assert entered == ([rows] if rows >= MIN_ROWS else [])
    exact = x.double() @ layer.weight.double().t() + bias.double()
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 48)
    # one rounding is within half a bfloat16 step (|v| * 2**-8); torch's own
    # product of few rows rounds the product, then its sum with the bias
    half_step = exact.abs() * 2.0**-8
    bound = half_step if rows >= MIN_ROWS else 2 * half_step
    assert bool(((out.double() - exact).abs() <= bound + 1e-5).all())


def test_only_unquantized_bfloat16_layers_widened_where_the_host_needs_it():
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm_plugin_kit.linear import (
        WidenedBF16LinearMethod,
        host_has_native_bf16_gemm,
        widen_bf16_products,
    )

    model = torch.nn.ModuleDict({"bf16": _linear_layer(8, 16, torch.bfloat16),
                                 "fp32": _linear_layer(8, 16, torch.float32),
                                 "plain": torch.nn.Linear(16, 8)})
    native = host_has_native_bf16_gemm()
    assert widen_bf16_products(model) == (0 if native else 1)
    assert type(model["bf16"].quant_method) is (
        UnquantizedLinearMethod if native else WidenedBF16LinearMethod)
    assert type(model["fp32"].quant_method) is UnquantizedLinearMethod
