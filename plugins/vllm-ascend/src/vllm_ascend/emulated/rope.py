"""References of torch_npu's rotary position embedding kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _rotate(x: torch.Tensor, rotary_mode: str) -> torch.Tensor:
    if rotary_mode == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    if rotary_mode == "interleave":
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)
    raise ValueError(f"rotary_mode must be 'half' or 'interleave', not {rotary_mode!r}")


def npu_rotary_mul(input: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor,
                   rotary_mode: str = "half", rotate: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """r1 · x + r2 · rotate(x) on 4-D inputs (cos = r1, sin = r2, broadcast)."""
    if input.dim() != 4 or r1.dim() != 4 or r2.dim() != 4:
        raise ValueError("npu_rotary_mul takes 4-D input, r1 and r2")
    xf = input.float()
    turned = xf @ rotate.float() if rotate is not None else _rotate(xf, rotary_mode)
    return (r1.float() * xf + r2.float() * turned).to(input.dtype)


def npu_mrope(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
              cos_sin_cache: torch.Tensor, head_size: int, *,
              mrope_section: Sequence[int] | None = None, rotary_mode: str = "half",
              cache_mode: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
    """(query, key) rotated by the positions' rows of ``cos_sin_cache``.

    ``cos_sin_cache`` is (max positions, rotary_dim): cos in the first half of
    a row, sin in the second. 1-D positions are plain RoPE; (3, tokens)
    positions with ``mrope_section`` take the cos/sin of each section from its
    own row (multimodal RoPE). Query and key are 2-D (tokens, heads ·
    head_size); dims past rotary_dim pass through.
    """
    if cache_mode != "default":
        raise NotImplementedError(f"npu_mrope: cache_mode={cache_mode!r} is not emulated")
    if query.dim() != 2 or key.dim() != 2 or cos_sin_cache.dim() != 2:
        raise ValueError("npu_mrope takes 2-D query, key and cos_sin_cache")
    rotary_dim = cos_sin_cache.shape[-1]
    if positions.numel() and int(positions.max()) >= cos_sin_cache.shape[0]:
        raise ValueError(f"npu_mrope: position {int(positions.max())} is outside the cache "
                         f"of {cos_sin_cache.shape[0]} positions")
    cos_sin = cos_sin_cache.float()[positions.long()]
    cos, sin = cos_sin.chunk(2, dim=-1)
    if positions.dim() == 2:
        sections = list(mrope_section or [])
        if positions.shape[0] != 3 or sum(sections) != rotary_dim // 2:
            raise ValueError("npu_mrope: (3, tokens) positions need mrope_section summing "
                             "to rotary_dim / 2")
        cos = torch.cat([part[i] for i, part in enumerate(cos.split(sections, dim=-1))], -1)
        sin = torch.cat([part[i] for i, part in enumerate(sin.split(sections, dim=-1))], -1)
    elif positions.dim() != 1:
        raise ValueError("npu_mrope: positions must be (tokens,) or (3, tokens)")
    if rotary_mode == "half":
        cos, sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    else:
        cos, sin = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)

    def rotated(x: torch.Tensor) -> torch.Tensor:
        heads = x.view(x.shape[0], -1, head_size).float()
        rot, rest = heads[..., :rotary_dim], heads[..., rotary_dim:]
        rot = rot * cos[:, None] + _rotate(rot, rotary_mode) * sin[:, None]
        return torch.cat((rot, rest), dim=-1).reshape(x.shape).to(x.dtype)

    return rotated(query), rotated(key)
