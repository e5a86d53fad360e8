"""Linear layers through oneDNN, with each weight packed once after loading.

``F.linear`` on the CPU build of torch goes to MKL's sgemm for float32, which
on the AMD CPUs measured here runs at 110-210 GFLOP/s; oneDNN's matmul with a
weight reordered once into its blocked layout runs the same products at
330-490 GFLOP/s, in float32 arithmetic (bfloat16 gains about a quarter at
decode sizes). Both are ATen ops of torch's own CPU build
(``mkldnn._reorder_linear_weight`` / ``mkldnn._linear_pointwise``, the pair
Inductor's weight freezing uses), so the plugin stays pure PyTorch.

vLLM has no platform hook for the unquantized GEMM of an out-of-tree
platform, so the model runner swaps, after loading, the quantization method
of each unquantized linear layer and of the LM head for one whose ``apply``
uses the packed weight. In a compiled model the product is the opaque op
``cpu_sim::packed_linear``: Inductor lowers ``mkldnn._linear_pointwise`` only
for the static shapes of its own weight freezing, not for a dynamic token
count, and fuses the element-wise work around the opaque op just as well.
"""

from __future__ import annotations

import functools
from collections import Counter

import torch
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    UnquantizedEmbeddingMethod,
)

from vllm_cpu_sim import get_logger

logger = get_logger(__name__)

#: Rows the weight layout is chosen for: a decode batch. Larger and smaller
#: inputs run on the same packed weight.
PACK_FOR_ROWS = 32
PACKED_DTYPES = (torch.float32, torch.bfloat16)


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


@torch.library.custom_op("cpu_sim::packed_linear", mutates_args=())
def packed_linear_op(x: torch.Tensor, packed: torch.Tensor, out_features: int,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`packed_linear` as one op in a compiled graph."""
    return packed_linear(x, packed, out_features, bias)


@packed_linear_op.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, out_features: int,
      bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The [out, in] weight in oneDNN's layout for :func:`packed_linear`, in its
    own dtype, or in float32 where oneDNN cannot pack that dtype on this CPU
    (twice the memory of a bfloat16 weight, four to eight times the speed of the
    ``F.linear`` bfloat16 fallback on an AVX2-only CPU)."""
    weight = weight.detach()
    if not supported(weight.dtype):
        weight = weight.float()
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_FOR_ROWS)


class _PackedApply:
    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        # Eagerly, the plain function saves the custom op's dispatch (121
        # products a step in the default model).
        run = packed_linear_op if torch.compiler.is_compiling() else packed_linear
        return run(x, layer.cpu_sim_packed_weight, layer.cpu_sim_out_features, bias)


class PackedLinearMethod(_PackedApply, UnquantizedLinearMethod):
    """An unquantized linear layer whose product runs on its packed weight."""


class PackedLMHeadMethod(_PackedApply, UnquantizedEmbeddingMethod):
    """The LM head's logits from its packed weight; token lookups (a tied
    embedding shares the weight) still read the original."""


@functools.cache
def supported(dtype: torch.dtype = torch.float32) -> bool:
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


def pack_model(model: torch.nn.Module) -> int:
    """Pack every unquantized linear layer and LM head of ``model``; returns how many.

    A weight used by this layer alone is dropped after packing (the packed
    copy replaces it, as the memory the weights take); a weight shared with
    another module, such as an LM head tied to the embedding, is kept.
    """
    if not supported(torch.float32):
        logger.warning("cpu_sim: oneDNN matmul is not available in this torch build; "
                       "linear layers use F.linear")
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
        if not supported(weight.dtype):
            widened.add(weight.dtype)
        module.register_buffer("cpu_sim_packed_weight", pack_weight(weight), persistent=False)
        module.cpu_sim_out_features = weight.shape[0]
        if uses[id(weight)] == 1:
            module.weight = torch.nn.Parameter(weight.new_empty(0), requires_grad=False)
        module.quant_method = new_method
        packed += 1
    for dtype in sorted(map(str, widened)):
        logger.info("cpu_sim: oneDNN cannot pack %s weights on this CPU; they are packed "
                    "as float32 (float32 products, results rounded to %s)",
                    dtype.removeprefix("torch."), dtype.removeprefix("torch."))
    return packed
