"""PyTorch forms of the Triton kernels that vLLM's model runner launches.

vLLM writes a few bookkeeping kernels in Triton and lets a platform without
Triton replace them (``Platform.register_triton_kernel_overrides``): the
slot mapping here, the rejection sampler's speculative-decoding kernels in
:mod:`vllm_plugin_kit.rejection`. These are vectorised tensor programs: no
loop over requests or tokens, and every tensor made on the device of the
tensors they index, so the same form serves a device's runner as well as the
host's.
"""

from __future__ import annotations

from typing import Any

import torch

from vllm_plugin_kit import rejection

SLOT_MAPPING_KERNEL = "vllm.v1.worker.block_table.ComputeSlotMappingKernel.kernel"


def compute_slot_mapping(
    num_tokens: int,
    max_num_tokens: int,
    query_start_loc: torch.Tensor,  # [num_reqs + 1]
    positions: torch.Tensor,  # [num_tokens]
    block_table: torch.Tensor,  # [max_num_reqs, max_blocks_per_req]
    block_table_stride: int,
    slot_mapping: torch.Tensor,  # [max_num_tokens], written in place
    KV_CACHE_BLOCK_SIZE: int,  # noqa: N803 (the Triton kernel's parameter names)
    TOTAL_CP_WORLD_SIZE: int = 1,  # noqa: N803
    TOTAL_CP_RANK: int = 0,  # noqa: N803
    CP_KV_CACHE_INTERLEAVE_SIZE: int = 1,  # noqa: N803
    PAD_ID: int = -1,  # noqa: N803
    BLOCK_SIZE: int = 1024,  # noqa: N803
) -> None:
    """Cache slot of every scheduled token: its block from the request's row of
    the block table, times the block size, plus its offset in the block; the
    rest of ``slot_mapping`` up to ``max_num_tokens`` is padding."""
    if TOTAL_CP_WORLD_SIZE != 1:
        raise NotImplementedError("no context parallelism on this platform")
    num_tokens = int(num_tokens)
    block_size = int(KV_CACHE_BLOCK_SIZE)
    qsl = query_start_loc.to(torch.int64)
    counts = qsl[1:] - qsl[:-1]
    requests = torch.arange(counts.numel(), device=block_table.device)
    req = torch.repeat_interleave(requests, counts.to(block_table.device),
                                  output_size=num_tokens)
    pos = positions[:num_tokens].to(torch.int64)
    blocks = block_table[req, pos // block_size].to(torch.int64)
    slot_mapping[:num_tokens] = blocks * block_size + pos % block_size
    slot_mapping[num_tokens:max_num_tokens] = PAD_ID


def _no_warmup(*args: Any, **kwargs: Any) -> None:
    """A PyTorch form has nothing to compile ahead of its first launch."""


OVERRIDES = {SLOT_MAPPING_KERNEL: compute_slot_mapping, **rejection.OVERRIDES}


def register_overrides(overrides: dict[str, Any] | None = None) -> None:
    """Register ``overrides`` (default: every form here) with vLLM's dispatcher.

    vLLM's GPU worker warms every JIT kernel at start by calling the kernel's
    ``warmup``; a registered override has none, and the warm-up would stop at
    ``assert warmup is not None``. Each one gets a warm-up that does nothing.
    """
    from vllm.triton_utils.dispatcher import _resolve_kernel, register_kernels

    overrides = OVERRIDES if overrides is None else overrides
    register_kernels(overrides)
    for name in overrides:
        host, attr = _resolve_kernel(name)
        wrapper = getattr(host, attr)
        if getattr(wrapper, "warmup", None) is None:
            wrapper.warmup = _no_warmup
