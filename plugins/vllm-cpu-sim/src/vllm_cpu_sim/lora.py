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
        x = x.clone()
        _zero_unadapted(x, self.token_lora_indices)
        super().add_lora_embedding(y, x, lora_b_stacked, add_inputs, **kwargs)

    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale: Any, *,
                        buffer: torch.Tensor | None = None, **kwargs: Any) -> None:
        from vllm.lora.ops.torch_ops import bgmv_expand, bgmv_shrink

        # vLLM's logits LoRA: shrink into a float32 buffer, then expand, by
        # sampler row (the buffer zeroed between for rows with no adapter)
        flat_y, flat_x = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        if buffer is None:
            buffer = torch.zeros((flat_x.size(0), lora_b_stacked.size(-1)),
                                 dtype=torch.float32, device=x.device)
        bgmv_shrink(flat_x, lora_a_stacked, buffer, self.sampler_indices, scale)
        _zero_unadapted(buffer, self.sampler_indices)
        bgmv_expand(buffer, lora_b_stacked, flat_y, self.sampler_indices, add_inputs=True)
