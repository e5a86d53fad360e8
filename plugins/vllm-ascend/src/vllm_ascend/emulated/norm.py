"""References of torch_npu's normalisation and activation kernels (RMSNorm, with the
residual add, and SwiGLU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rstd_shape(x: torch.Tensor, gamma: torch.Tensor) -> list[int]:
    keep = x.dim() - gamma.dim()
    return [x.shape[i] if i < keep else 1 for i in range(x.dim())]


def _rms(x: torch.Tensor, gamma: torch.Tensor, epsilon: float
         ) -> tuple[torch.Tensor, torch.Tensor]:
    if tuple(x.shape[x.dim() - gamma.dim():]) != tuple(gamma.shape):
        raise ValueError(f"gamma {tuple(gamma.shape)} must match the last dims of x "
                         f"{tuple(x.shape)}")
    dims = tuple(range(x.dim() - gamma.dim(), x.dim()))
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + epsilon)
    return xf * rstd * gamma.float(), rstd.reshape(_rstd_shape(x, gamma))


def npu_rms_norm(input: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd): y = x / sqrt(mean(x², over gamma's dims) + ε) · γ; rstd in float32."""
    y, rstd = _rms(input, gamma, epsilon)
    return y.to(input.dtype), rstd


def npu_add_rms_norm(x1: torch.Tensor, x2: torch.Tensor, gamma: torch.Tensor,
                     epsilon: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, rstd, x): RMSNorm of x = x1 + x2; the third output, x in the input
    dtype, is what a decoder layer carries on as its residual."""
    if x1.shape != x2.shape or x1.dtype != x2.dtype:
        raise ValueError("npu_add_rms_norm: x1 and x2 must have one shape and dtype")
    summed = x1.float() + x2.float()
    y, rstd = _rms(summed, gamma, epsilon)
    return y.to(x1.dtype), rstd, summed.to(x1.dtype)


def npu_swiglu(input: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """swish(A) · B, where A and B are the two halves of the input along ``dim``."""
    if input.shape[dim] % 2:
        raise ValueError(f"npu_swiglu: dim {dim} of size {input.shape[dim]} is odd")
    a, b = input.float().chunk(2, dim=dim)
    return (F.silu(a) * b).to(input.dtype)
