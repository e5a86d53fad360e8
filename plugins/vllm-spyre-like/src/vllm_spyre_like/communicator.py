"""Collectives between the workers of a tensor-parallel group, over torch.distributed.

vLLM's base communicator calls ``all_gather_into_tensor`` and
``reduce_scatter_tensor``, which gloo does not implement; these forms use the
list collectives gloo has. Your device: call its collective library here
(on the process groups vLLM creates with the platform's ``dist_backend``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from vllm.distributed.device_communicators.base_device_communicator import (
    DeviceCommunicatorBase,
)


class SpyreLikeCommunicator(DeviceCommunicatorBase):
    def all_reduce(self, input_: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(input_, group=self.device_group)
        return input_

    def all_gather(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if self.world_size == 1:
            return input_
        parts = [torch.empty_like(input_) for _ in range(self.world_size)]
        dist.all_gather(parts, input_.contiguous(), group=self.device_group)
        return torch.cat(parts, dim=dim)

    def reduce_scatter(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if self.world_size == 1:
            return input_
        # gloo has no reduce_scatter: reduce everywhere, keep this rank's slice.
        total = input_.clone()
        dist.all_reduce(total, group=self.device_group)
        return total.chunk(self.world_size, dim=dim)[self.rank_in_group].contiguous()
