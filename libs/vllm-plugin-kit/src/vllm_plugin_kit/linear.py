"""Linear layers of a device stood in for on the host.

Two forms, both swapped in after loading as the ``quant_method`` of vLLM's
unquantized layers (vLLM has no platform hook for the unquantized GEMM of an
out-of-tree platform):

- :func:`pack_model`: each weight packed once for oneDNN
  (``mkldnn._reorder_linear_weight`` / ``mkldnn._linear_pointwise``, the pair
  Inductor's weight freezing uses) and every product run on it. On the AMD
  CPUs measured (``docs/benchmarks.md``) that is 2 to 3 times ``F.linear``
  (MKL) in float32 and faster in bfloat16. In a compiled model the product is
  the opaque op ``vllm_plugin_kit::packed_linear``: Inductor lowers
  ``mkldnn._linear_pointwise`` only for the static shapes of its own freezing,
  and fuses the element-wise work around an opaque op just as well.
- :func:`widen_bf16_products`: vLLM's own product, with bfloat16 products of
  :data:`MIN_ROWS` rows or more widened to float32 and rounded back once where
  the CPU has no native bfloat16 GEMM (AVX2 only, e.g. AMD Zen 3): float32
  accumulation and one rounding, the arithmetic of a bfloat16 GEMM, far sooner
  than torch's scalar fallback there. For stand-ins that keep the weight as the
  model holds it (graphs captured or compiled around ``F.linear``).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    UnquantizedEmbeddingMethod,
)

from vllm_plugin_kit import get_logger

logger = get_logger(__name__)

#: Rows the packed weight layout is chosen for: a decode batch. Larger and
#: smaller inputs run on the same packed weight.
PACK_FOR_ROWS = 32
PACKED_DTYPES = (torch.float32, torch.bfloat16)
#: Fewer rows than this keep torch's bfloat16 product: for one row it is the
#: faster (no widened copy of the weight); from two rows on the widened one is.
MIN_ROWS = 2


# ---------------------------------------------------------------- packed (oneDNN)

def packed_linear(x: torch.Tensor, packed: torch.Tensor, out_features: int,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with the weight as packed by :func:`pack_weight`.

    A bfloat16 weight this CPU cannot pack was packed as float32: the input is
    widened to it and the output rounded back, the arithmetic of oneDNN's own
    bfloat16 product (float32 accumulation, one rounding of the result).
    """
    rows = x.reshape(-1, x.shape[-1])
    if rows.dtype != packed.dtype:
        rows = rows.to(packed.dtype)
        bias = None if bias is None else bias.to(packed.dtype)
    if not rows.is_contiguous():
        rows = rows.contiguous()
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return out.to(x.dtype).view(*x.shape[:-1], out_features)


@torch.library.custom_op("vllm_plugin_kit::packed_linear", mutates_args=())
def packed_linear_op(x: torch.Tensor, packed: torch.Tensor, out_features: int,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`packed_linear` as one op in a compiled graph."""
    return packed_linear(x, packed, out_features, bias)


@packed_linear_op.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, out_features: int,
      bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


@functools.cache
def packs(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN packs and multiplies ``dtype`` weights natively on this CPU.

    Its bfloat16 reorder needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT and raises
    on an AVX2-only CPU (e.g. AMD Zen 3).
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(2, 4, dtype=dtype)
        w = torch.ones(3, 4, dtype=dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, PACK_FOR_ROWS)
        return bool(torch.equal(packed_linear(x, packed, 3, None), x @ w.t()))
    except RuntimeError:
        return False


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The [out, in] weight in oneDNN's layout for :func:`packed_linear`, in its
    own dtype, or in float32 where oneDNN cannot pack that dtype on this CPU."""
    weight = weight.detach()
    if not packs(weight.dtype):
        weight = weight.float()
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_FOR_ROWS)


class _PackedApply:
    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        # Eagerly, the plain function saves the custom op's dispatch.
        run = packed_linear_op if torch.compiler.is_compiling() else packed_linear
        return run(x, layer.packed_weight, layer.packed_out_features, bias)


class PackedLinearMethod(_PackedApply, UnquantizedLinearMethod):
    """An unquantized linear layer whose product runs on its packed weight."""


class PackedLMHeadMethod(_PackedApply, UnquantizedEmbeddingMethod):
    """The LM head's logits from its packed weight; token lookups (a tied
    embedding shares the weight) still read the original."""


def pack_model(model: torch.nn.Module, log: logging.Logger = logger) -> int:
    """Pack every unquantized linear layer and LM head of ``model``; returns how many.

    A weight used by this layer alone is dropped after packing (the packed copy
    replaces it in the memory the weights take); a weight shared with another
    module, such as an LM head tied to the embedding, is kept.
    """
    if not packs(torch.float32):
        log.warning("oneDNN matmul is not available in this torch build; linear layers "
                    "use F.linear")
        return 0
    uses = Counter(id(param) for _, param in model.named_parameters(remove_duplicate=False))
    packed = 0
    widened: set[torch.dtype] = set()
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if type(method) is UnquantizedLinearMethod:
            new_method: _PackedApply = PackedLinearMethod()
        elif isinstance(module, ParallelLMHead) and type(method) is UnquantizedEmbeddingMethod:
            new_method = PackedLMHeadMethod()
        else:
            continue
        weight = module.weight
        if weight.ndim != 2 or weight.dtype not in PACKED_DTYPES or weight.device.type != "cpu":
            continue
        if not packs(weight.dtype):
            widened.add(weight.dtype)
        module.register_buffer("packed_weight", pack_weight(weight), persistent=False)
        module.packed_out_features = weight.shape[0]
        if uses[id(weight)] == 1:
            module.weight = torch.nn.Parameter(weight.new_empty(0), requires_grad=False)
        module.quant_method = new_method
        packed += 1
    for dtype in sorted(str(d).removeprefix("torch.") for d in widened):
        log.info("oneDNN cannot pack %s weights on this CPU; they are packed as float32 "
                 "(float32 products, results rounded to %s)", dtype, dtype)
    return packed


# ---------------------------------------------------------------- widened bfloat16

def host_has_native_bf16_gemm() -> bool:
    """Whether torch multiplies bfloat16 through oneDNN on this CPU."""
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class WidenedBF16LinearMethod(UnquantizedLinearMethod):
    """vLLM's unquantized method with its bfloat16 products of many rows in float32.

    ``around``: a context entered around each widened product, so that a plugin
    counting a device's kernels can count the product, conversions and all, as
    the one matrix product the device runs."""

    def __init__(self, around: Callable[[], AbstractContextManager] | None = None) -> None:
        super().__init__()
        self.around = around or nullcontext

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.numel() < MIN_ROWS * x.shape[-1]:
            return super().apply(layer, x, bias)
        with self.around():
            wide_bias = None if bias is None else bias.float()
            return F.linear(x.float(), layer.weight.float(), wide_bias).to(x.dtype)


def widen_bf16_products(model: torch.nn.Module,
                        around: Callable[[], AbstractContextManager] | None = None) -> int:
    """Give each unquantized bfloat16 linear layer of ``model`` the widened method
    (with ``around``, :class:`WidenedBF16LinearMethod`) where the host lacks a
    native bfloat16 GEMM; returns how many layers."""
    if host_has_native_bf16_gemm():
        return 0
    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (type(getattr(module, "quant_method", None)) is UnquantizedLinearMethod
                and isinstance(weight, torch.Tensor) and weight.dtype == torch.bfloat16):
            module.quant_method = WidenedBF16LinearMethod(around)
            count += 1
    return count
