"""W8A8 models in ModelSlim's format, on the NPU's int8 matmul.

A ModelSlim checkpoint (what Ascend's msModelSlim exports, and what
``python -m vllm_ascend.quantize`` makes from a Hugging Face model) holds int8
weights next to a ``quant_model_description.json`` that names each tensor's
scheme: ``FLOAT`` (kept as it was), ``W8A8`` (static: the activation is
quantized with a calibrated per-tensor scale and offset) or ``W8A8_DYNAMIC``
(the activation is quantized per token at run time). Weights are symmetric
per output channel in both.

Per linear layer of output size n and input size k:

- ``W8A8``: ``weight`` int8 [n, k], ``input_scale`` and ``input_offset`` [1],
  ``quant_bias`` int32 [n] and ``deq_scale`` float32 [n]. The step is
  ``x_q = npu_quantize(x, input_scale, input_offset)``, then
  ``npu_quant_matmul(x_q, weightᵀ, deq_scale, bias=quant_bias)``:
  ``deq_scale = input_scale · weight_scale`` and ``quant_bias`` takes the
  input offset out of the integer product.
- ``W8A8_DYNAMIC``: ``weight`` int8 [n, k], ``weight_scale`` and
  ``weight_offset`` [n, 1] (the offset is 0: symmetric). The step is
  ``x_q, s = npu_dynamic_quant(x)``, then
  ``npu_quant_matmul(x_q, weightᵀ, weight_scale, pertoken_scale=s)``.

A layer's own bias stays a separate floating-point tensor, added to the
output. Layers the description does not name (the LM head, the embedding)
stay unquantized.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.layers.linear import (
    LinearBase,
    LinearMethodBase,
    RowParallelLinear,
    UnquantizedLinearMethod,
    register_weight_loader_v2_supported_method,
)
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.parameter import (
    ChannelQuantScaleParameter,
    ModelWeightParameter,
    PerTensorScaleParameter,
)

from vllm_ascend import npu_ops

#: the name vLLM knows this method by (``--quantization ascend``)
NAME = "ascend"
DESCRIPTION_FILE = "quant_model_description.json"
FLOAT, STATIC, DYNAMIC = "FLOAT", "W8A8", "W8A8_DYNAMIC"
SCHEMES = (FLOAT, STATIC, DYNAMIC)
#: the tensors of a linear layer under each scheme, beside its optional bias
TENSORS = {
    STATIC: ("weight", "input_scale", "input_offset", "quant_bias", "deq_scale"),
    DYNAMIC: ("weight", "weight_scale", "weight_offset"),
}


@register_quantization_config(NAME)
class AscendW8A8Config(QuantizationConfig):
    """The schemes of one ModelSlim checkpoint, read from its description file."""

    def __init__(self, description: dict[str, Any]) -> None:
        super().__init__()
        self.description = description
        unknown = sorted({v for k, v in description.items()
                          if isinstance(v, str) and k.endswith(".weight")
                          and v not in SCHEMES})
        if unknown:
            raise ValueError(f"{DESCRIPTION_FILE} names schemes {unknown} that vllm-ascend "
                             f"does not run; it runs {', '.join(SCHEMES)}")

    def get_name(self) -> str:
        return NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0  # a CUDA notion; there are no capability levels here

    @staticmethod
    def get_config_filenames() -> list[str]:
        return [DESCRIPTION_FILE]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AscendW8A8Config:
        return cls(config)

    def scheme_of(self, prefix: str) -> str:
        """The scheme of the layer at ``prefix``; a fused layer (qkv_proj)
        takes its parts' (q_proj, k_proj, v_proj), which must agree."""
        *parents, name = prefix.split(".")
        parts = self.packed_modules_mapping.get(name, [name])
        schemes = {self.description.get(".".join([*parents, part, "weight"]), FLOAT)
                   for part in parts}
        if len(schemes) > 1:
            raise ValueError(f"{prefix} fuses layers of different schemes {sorted(schemes)}; "
                             "vLLM runs them as one matmul, so they must share one")
        return schemes.pop()

    def get_quant_method(self, layer: torch.nn.Module, prefix: str
                         ) -> LinearMethodBase | None:
        if not isinstance(layer, LinearBase):
            return None
        scheme = self.scheme_of(prefix)
        if scheme == FLOAT:
            return UnquantizedLinearMethod()
        return W8A8LinearMethod(dynamic=scheme == DYNAMIC)


@register_weight_loader_v2_supported_method
class W8A8LinearMethod(LinearMethodBase):
    """int8 weights and activations through ``npu_quant_matmul``."""

    def __init__(self, *, dynamic: bool) -> None:
        self.dynamic = dynamic

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int,
                       output_size: int, params_dtype: torch.dtype,
                       **extra_weight_attrs: Any) -> None:
        loader = extra_weight_attrs["weight_loader"]
        n = sum(output_partition_sizes)
        layer.register_parameter("weight", ModelWeightParameter(
            data=torch.empty(n, input_size_per_partition, dtype=torch.int8),
            input_dim=1, output_dim=0, weight_loader=loader))
        if self.dynamic:
            for name in ("weight_scale", "weight_offset"):
                layer.register_parameter(name, ChannelQuantScaleParameter(
                    data=torch.empty(n, 1, dtype=params_dtype), output_dim=0,
                    weight_loader=loader))
            return
        # one per fused part (q, k, v): they quantize the same input
        for name in ("input_scale", "input_offset"):
            layer.register_parameter(name, PerTensorScaleParameter(
                data=torch.empty(len(output_partition_sizes), dtype=params_dtype),
                weight_loader=loader))
        layer.register_parameter("quant_bias", ChannelQuantScaleParameter(
            data=torch.empty(n, dtype=torch.int32), output_dim=0, weight_loader=loader))
        layer.register_parameter("deq_scale", ChannelQuantScaleParameter(
            data=torch.empty(n, dtype=torch.float32), output_dim=0,
            weight_loader=_float_deq_scale(loader)))

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        # npu_quant_matmul takes the weight as [k, n]: a transposed view
        layer.weight = torch.nn.Parameter(layer.weight.data.t(), requires_grad=False)
        if self.dynamic:
            if bool(layer.weight_offset.data.ne(0).any()):
                raise ValueError("W8A8_DYNAMIC weights must be symmetric (weight_offset 0)")
            layer.weight_scale = torch.nn.Parameter(
                layer.weight_scale.data.flatten().float(), requires_grad=False)
            del layer.weight_offset
            return
        for name in ("input_scale", "input_offset"):
            values = getattr(layer, name).data
            if bool(values.ne(values[0]).any()):
                raise ValueError(f"the fused parts of one layer quantize one input with "
                                 f"different {name}s {values.tolist()}")
            setattr(layer, name, torch.nn.Parameter(values[:1].clone(), requires_grad=False))

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if self.dynamic:
            x_q, per_token = npu_ops.npu_dynamic_quant(rows)
            out = npu_ops.npu_quant_matmul(x_q, layer.weight, layer.weight_scale,
                                           pertoken_scale=per_token, bias=bias,
                                           output_dtype=x.dtype)
        else:
            x_q = npu_ops.npu_quantize(rows, layer.input_scale, layer.input_offset,
                                       torch.qint8, -1, True)
            out = npu_ops.npu_quant_matmul(x_q, layer.weight, layer.deq_scale,
                                           bias=quant_bias(layer), output_dtype=x.dtype)
            if bias is not None:
                out = out + bias
        return out.reshape(*shape[:-1], out.shape[-1])


def quant_bias(layer: torch.nn.Module) -> torch.Tensor | None:
    """The layer's ``quant_bias``, or None on the tensor-parallel ranks after the
    first of a row-parallel layer.

    ``quant_bias`` corrects the whole output channel (all of k) for the input
    offset, and a row-parallel layer's ranks each hold a slice of k whose
    partial products are summed by an all-reduce: added on every rank it would
    count tp times. As vLLM adds a row-parallel layer's own bias on rank 0
    only, and as upstream vllm-ascend passes ``quant_bias`` on rank 0 only.
    """
    if isinstance(layer, RowParallelLinear) and getattr(layer, "tp_rank", 0) > 0:
        return None
    return layer.quant_bias


def _float_deq_scale(loader: Any) -> Any:
    """deq_scale as float32: ModelSlim writes int64 (npu_trans_quant_param's
    packed form) for float16 models, which this plugin does not read."""

    def load(param: torch.Tensor, loaded: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if loaded.dtype == torch.int64:
            raise ValueError("this checkpoint's deq_scale is int64 (a float16 ModelSlim "
                             "export); vllm-ascend reads float32 deq_scale (bfloat16 exports)")
        loader(param, loaded, *args, **kwargs)

    return load
