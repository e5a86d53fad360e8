"""Collectives between vllm-ascend workers: HCCL on NPUs, gloo when emulated.

On NPUs vLLM's base communicator does the work over HCCL. Emulated workers
talk over gloo, which lacks the ``*_into_tensor`` collectives the base class
calls; there these forms use the list collectives gloo has.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from vllm.distributed.device_communicators.base_device_communicator import (
    DeviceCommunicatorBase,
)


class NPUCommunicator(DeviceCommunicatorBase):
    def _on_gloo(self) -> bool:
        return dist.get_backend(self.device_group) == "gloo"

    def all_reduce(self, input_: torch.Tensor) -> torch.Tensor:
        if not self._on_gloo():
            return super().all_reduce(input_)
        dist.all_reduce(input_, group=self.device_group)
        return input_

    def all_gather(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if not self._on_gloo():
            return super().all_gather(input_, dim)
        if self.world_size == 1:
            return input_
        parts = [torch.empty_like(input_) for _ in range(self.world_size)]
        dist.all_gather(parts, input_.contiguous(), group=self.device_group)
        return torch.cat(parts, dim=dim)

    def all_gatherv(
        self,
        input_: torch.Tensor | list[torch.Tensor],
        dim: int = 0,
        sizes: list[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        if not self._on_gloo():
            return super().all_gatherv(input_, dim, sizes)
        tensors = input_ if isinstance(input_, list) else [input_]
        gathered = [self._gather_uneven(t, dim, sizes) for t in tensors]
        return gathered if isinstance(input_, list) else gathered[0]

    def _gather_uneven(self, tensor: torch.Tensor, dim: int, sizes: list[int] | None):
        if sizes is None:
            return self.all_gather(tensor, dim)
        # gloo gathers equal shapes only: pad every rank to the largest, then trim.
        dim = dim % tensor.dim()
        longest = max(sizes)
        pad = [0, 0] * (tensor.dim() - 1 - dim) + [0, longest - tensor.shape[dim]]
        padded = F.pad(tensor, pad).contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded, group=self.device_group)
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)

    def reduce_scatter(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if not self._on_gloo():
            return super().reduce_scatter(input_, dim)
        if self.world_size == 1:
            return input_
        if input_.shape[dim] % self.world_size:
            raise ValueError(
                f"reduce_scatter: dim {dim} of size {input_.shape[dim]} is not "
                f"divisible by the world size {self.world_size}"
            )
        return self.reduce_scatterv(input_, dim)

    def reduce_scatterv(
        self, input_: torch.Tensor, dim: int = -1, sizes: list[int] | None = None
    ) -> torch.Tensor:
        if not self._on_gloo():
            return super().reduce_scatterv(input_, dim, sizes)
        # gloo has no reduce_scatter: reduce everywhere, keep this rank's slice.
        total = input_.clone()
        dist.all_reduce(total, group=self.device_group)
        if sizes is None:
            return total.chunk(self.world_size, dim=dim)[self.rank_in_group].contiguous()
        return total.split(sizes, dim=dim)[self.rank_in_group].contiguous()
