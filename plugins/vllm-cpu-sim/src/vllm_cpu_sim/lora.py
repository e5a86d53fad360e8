"""LoRA's batched adapter products on the host: vLLM's CPU punica wrapper, right
for tokens without an adapter.

vLLM marks a token of a request without an adapter with index -1, which its
GPU kernels skip. The PyTorch ops under vLLM's CPU wrapper gather the adapter
weights with that index as it is, and -1 picks the last adapter slot: once
every slot holds an adapter (``--max-loras`` of them in one batch), a base-model
request batched beside them runs through the last adapter. Here the rows of such
tokens are zeroed after the shrink (``x @ A``), so the expand (``@ B``) adds
nothing to them, as on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU


def _zero_unadapted(y: torch.Tensor | tuple[torch.Tensor, ...], indices: torch.Tensor) -> None:
    """Zero the rows of ``y`` (a tensor or one per slice) whose token has no adapter."""
    for out in y if isinstance(y, tuple | list) else (y,):
        rows = out.view(-1, out.shape[-1])
        rows[: indices.shape[0]][indices[: rows.shape[0]] < 0] = 0


def _unadapted_zeroed(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` with the rows of tokens without an adapter zeroed."""
    x = x.clone()
    _zero_unadapted(x, indices)
    return x


class CpuSimPunicaWrapper(PunicaWrapperCPU):
    """vLLM's CPU wrapper, its shrinks zeroed for tokens with no adapter."""

    def _shrink_prefill(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor,
                        scale: float) -> None:
        if self.no_lora:
            return
        super()._shrink_prefill(y, x, w_t_all, scale)
        _zero_unadapted(y, self.token_lora_indices)

    def _shrink_decode(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor,
                       scale: float) -> None:
        super()._shrink_decode(y, x, w_t_all, scale)
        _zero_unadapted(y, self.token_lora_indices)

    def add_lora_embedding(self, y: torch.Tensor, x: torch.Tensor,
                           lora_b_stacked: torch.Tensor, add_inputs: bool = True,
                           **kwargs: Any) -> None:
        # the embedding's LoRA is an expand alone, of rows looked up per token
        super().add_lora_embedding(y, _unadapted_zeroed(x, self.token_lora_indices),
                                   lora_b_stacked, add_inputs, **kwargs)

    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale: Any, **kwargs: Any) -> None:
        # by sampler row: a zero row shrinks to zero, and its expand adds nothing
        super().add_lora_logits(y, _unadapted_zeroed(x, self.sampler_indices), lora_a_stacked,
                                lora_b_stacked, scale, **kwargs)
