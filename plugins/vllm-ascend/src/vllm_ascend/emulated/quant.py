"""References of torch_npu's int8 quantization kernels and the quantized matmul."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vllm_ascend.emulated.rules import float32_relaxation, unsupported

#: c10::ScalarType numbers of torch's dtypes: torch_npu registers its dtype
#: arguments as ``int`` (``npu_quantize(..., int dtype, ...)``,
#: ``npu_quant_matmul(..., int? output_dtype=None, ...)``), and the dispatcher
#: hands the kernel a torch dtype's ScalarType number
SCALAR_TYPES = {0: torch.uint8, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.int64,
                5: torch.float16, 6: torch.float32, 7: torch.float64, 11: torch.bool,
                12: torch.qint8, 13: torch.quint8, 14: torch.qint32, 15: torch.bfloat16}


def as_dtype(value: Any) -> Any:
    """A dtype argument as the kernel reads it: a torch dtype, or the ScalarType
    number the dispatcher passes for one; anything else is returned as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return SCALAR_TYPES.get(value, value)
    return value


#: output dtypes of the integer quantization ops, by the names torch_npu takes
_INT_DTYPES = {torch.qint8: torch.int8, torch.int8: torch.int8,
               torch.quint8: torch.uint8, torch.uint8: torch.uint8,
               torch.qint32: torch.int32, torch.int32: torch.int32}


def _saturate(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round to the nearest integer (ties to even: torch_npu's documents do not
    name the tie rule) and clamp to the range of ``dtype``."""
    info = torch.iinfo(dtype)
    return torch.round(x).clamp(info.min, info.max).to(dtype)


def _along(t: torch.Tensor, x: torch.Tensor, dim: int, name: str) -> torch.Tensor:
    """``t`` (one value, a 1-D tensor of x's size at ``dim``, or x's rank with
    every other dim 1) shaped to broadcast against x."""
    if t.dim() == 1 and t.numel() in (1, x.shape[dim]):
        shape = [1] * x.dim()
        shape[dim] = t.numel()
        return t.float().reshape(shape)
    if t.dim() == x.dim() and all(t.shape[i] == 1 for i in range(x.dim()) if i != dim) \
            and t.shape[dim] in (1, x.shape[dim]):
        return t.float()
    raise ValueError(f"{name} of shape {tuple(t.shape)} does not run along dim {dim} "
                     f"of input {tuple(x.shape)}")


def npu_quantize(input: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None,
                 dtype: torch.dtype | int, axis: int = 1, div_mode: bool = True) -> torch.Tensor:
    """x / scales + zero_points (``div_mode``) or x · scales + zero_points, in
    float32, rounded and saturated to ``dtype``. scales and zero_points run
    along ``axis``; without ``div_mode`` an axis of -2 is the second-last dim
    and any larger one the last."""
    out_dtype = _INT_DTYPES.get(as_dtype(dtype))
    if out_dtype is None:
        raise NotImplementedError(f"npu_quantize: the emulation does not implement dtype {dtype}")
    if div_mode:
        if not -input.dim() <= axis < input.dim():
            raise ValueError(f"npu_quantize: axis {axis} outside input of {input.dim()} dims")
        dim = axis % input.dim()
    else:
        if axis < -2:
            raise ValueError(f"npu_quantize: axis must be >= -2 without div_mode, got {axis}")
        dim = input.dim() - 2 if axis == -2 else input.dim() - 1
    y = input.float()
    s = _along(scales, input, dim, "scales")
    y = y / s if div_mode else y * s
    if zero_points is not None:
        y = y + _along(zero_points, input, dim, "zero_points")
    return _saturate(y, out_dtype)


def npu_dynamic_quant(input: torch.Tensor, *, smooth_scales: torch.Tensor | None = None,
                      group_index: torch.Tensor | None = None, dst_type: Any = None,
                      quant_mode: str = "pertoken", dst_type_max: float = 0.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, scale): symmetric per-token int8, scale = rowmax(|x · smooth|) / 127
    in float32 (x's shape without its last dim), y = round(x · smooth / scale).
    A row of zeros has scale 0 and y 0."""
    unsupported("npu_dynamic_quant", group_index=group_index)
    if dst_type not in (None, torch.int8, torch.qint8):
        raise NotImplementedError(f"npu_dynamic_quant: the emulation does not implement "
                                  f"dst_type {dst_type}")
    if quant_mode != "pertoken" or dst_type_max != 0.0:
        raise NotImplementedError("npu_dynamic_quant: the emulation implements quant_mode "
                                  "'pertoken' with the int8 range only")
    if input.dim() < 2:
        raise ValueError("npu_dynamic_quant: input needs at least 2 dims")
    if input.dtype == torch.float32:
        float32_relaxation("npu_dynamic_quant", "input")
    elif input.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"npu_dynamic_quant: input must be float16 or bfloat16, not "
                         f"{input.dtype}")
    x = input.float()
    if smooth_scales is not None:
        if tuple(smooth_scales.shape) != (x.shape[-1],):
            raise ValueError(f"npu_dynamic_quant: smooth_scales {tuple(smooth_scales.shape)} "
                             f"must be ({x.shape[-1]},)")
        x = x * smooth_scales.float()
    scale = x.abs().amax(dim=-1) / 127.0
    safe = torch.where(scale > 0, scale, 1.0)[..., None]
    return _saturate(x / safe, torch.int8), scale


def npu_quant_matmul(x1: torch.Tensor, x2: torch.Tensor, scale: torch.Tensor, *,
                     offset: torch.Tensor | None = None,
                     pertoken_scale: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, output_dtype: Any = None,
                     x1_dtype: Any = None, x2_dtype: Any = None,
                     pertoken_scale_dtype: Any = None, scale_dtype: Any = None,
                     group_sizes: Sequence[int] | None = None,
                     y_scale: torch.Tensor | None = None) -> torch.Tensor:
    """int8 x1 @ int8 x2 accumulated exactly (int32 on the NPU), plus an int32
    bias, times the per-channel ``scale`` and the per-token ``pertoken_scale``,
    plus a floating bias; int8 output (the default) adds ``offset`` and is
    rounded and saturated. The dtypes of scale, offset, bias, pertoken_scale and
    output must be one of the kernel's combinations (:func:`_quant_matmul_takes`);
    float32 output only under the :data:`FLOAT32_RELAXATION`, on bfloat16's terms."""
    unsupported("npu_quant_matmul", x1_dtype=x1_dtype, x2_dtype=x2_dtype,
                 pertoken_scale_dtype=pertoken_scale_dtype, scale_dtype=scale_dtype,
                 group_sizes=group_sizes, y_scale=y_scale)
    if x1.dtype != torch.int8 or x2.dtype != torch.int8:
        raise NotImplementedError("npu_quant_matmul: the emulation implements int8 x1 and x2 "
                                  f"only, got {x1.dtype} and {x2.dtype}")
    if not (2 <= x1.dim() <= 6 and 2 <= x2.dim() <= 6):
        raise ValueError("npu_quant_matmul: x1 and x2 need 2 to 6 dims")
    k, n = x2.shape[-2:]
    if x1.shape[-1] != k:
        raise ValueError(f"npu_quant_matmul: x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)} "
                         "do not multiply")
    if scale.dtype == torch.int64:
        raise NotImplementedError("npu_quant_matmul: the emulation takes scale in float32 or "
                                  "bfloat16, not npu_trans_quant_param's int64")
    if scale.dim() != 1 or scale.numel() not in (1, n):
        raise ValueError(f"npu_quant_matmul: scale must be (1,) or ({n},), "
                         f"got {tuple(scale.shape)}")
    out_dtype = torch.int8 if output_dtype is None else as_dtype(output_dtype)
    if out_dtype not in (torch.int8, torch.float16, torch.bfloat16, torch.float32):
        raise NotImplementedError(f"npu_quant_matmul: the emulation does not implement "
                                  f"output_dtype {out_dtype}")
    if offset is not None and out_dtype != torch.int8:
        raise ValueError("npu_quant_matmul: offset applies to int8 output only")
    if out_dtype == torch.float32:
        float32_relaxation("npu_quant_matmul", "output_dtype")
    if not _quant_matmul_takes(out_dtype, scale, offset, pertoken_scale, bias):
        def name(t: torch.Tensor | None) -> str:
            return "None" if t is None else str(t.dtype).removeprefix("torch.")
        raise ValueError(
            f"npu_quant_matmul: the kernel takes no output_dtype {out_dtype} with scale "
            f"{name(scale)}, offset {name(offset)}, pertoken_scale {name(pertoken_scale)} and "
            f"bias {name(bias)} (torch_npu's table of the Atlas A2/A3 combinations)")
    if x2.dim() == 2:
        # int8 products summed exactly in int32, as the NPU's cube unit does
        rows = torch._int_mm(x1.reshape(-1, k), x2).reshape(*x1.shape[:-1], n)
        acc = rows.double()
    else:  # float64 holds every int8 product sum of k < 2**38 terms exactly
        acc = torch.matmul(x1.double(), x2.double())
    if bias is not None and bias.dtype == torch.int32:
        acc = acc + bias.double()
    y = acc * scale.double()
    if pertoken_scale is not None:
        if tuple(pertoken_scale.shape) != tuple(x1.shape[:-1]):
            raise ValueError(f"npu_quant_matmul: pertoken_scale {tuple(pertoken_scale.shape)} "
                             f"must be ({', '.join(map(str, x1.shape[:-1]))},)")
        y = y * pertoken_scale.double()[..., None]
    if bias is not None and bias.dtype != torch.int32:
        y = y + bias.double()
    if out_dtype == torch.int8:
        if offset is not None:
            y = y + offset.double()
        return _saturate(y, torch.int8)
    return y.to(out_dtype)


def _quant_matmul_takes(out: torch.dtype, scale: torch.Tensor, offset: torch.Tensor | None,
                        pertoken_scale: torch.Tensor | None, bias: torch.Tensor | None) -> bool:
    """Whether int8 x1 and x2 with these dtypes are a combination of torch_npu
    2.13.0's table for Atlas A2/A3 (its docs of npu_quant_matmul): int8 and
    float16 out with scale int64/float32 and bias int32 or None, no
    pertoken_scale (int8 out may add a float32 offset); float16 out with a
    float32 pertoken_scale, scale float32, bias int32/float16/float32 or None;
    bfloat16 out with scale float32/bfloat16, bias int32/bfloat16/float32 or
    None, pertoken_scale float32 or None. float32 out (the relaxation) is held
    to bfloat16's terms."""
    bias_dtype = None if bias is None else bias.dtype
    if pertoken_scale is not None and pertoken_scale.dtype != torch.float32:
        return False
    if offset is not None and offset.dtype != torch.float32:
        return False
    per_channel = (scale.dtype in (torch.int64, torch.float32)
                   and bias_dtype in (None, torch.int32) and pertoken_scale is None)
    if out == torch.int8:
        return per_channel
    if out == torch.float16:
        return per_channel or (
            scale.dtype == torch.float32 and pertoken_scale is not None
            and bias_dtype in (None, torch.int32, torch.float16, torch.float32))
    if out in (torch.bfloat16, torch.float32):
        return scale.dtype in (torch.float32, torch.bfloat16) and \
            bias_dtype in (None, torch.int32, torch.bfloat16, torch.float32)
    return False
