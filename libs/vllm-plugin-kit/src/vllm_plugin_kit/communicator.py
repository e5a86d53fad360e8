"""Collectives between workers over torch.distributed on gloo.

vLLM's base communicator calls ``all_gather_into_tensor`` and
``reduce_scatter_tensor``, which gloo does not implement, and leaves out the
uneven forms (``all_gatherv``, ``reduce_scatterv``) that data and expert
parallelism use; these forms use the list collectives gloo has. A device's
communicator calls its own collective library instead (on the process groups
vLLM creates with the platform's ``dist_backend``), and may keep these for the
uneven forms its library lacks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from vllm.distributed.device_communicators.base_device_communicator import (
    DeviceCommunicatorBase,
)


class GlooCommunicator(DeviceCommunicatorBase):
    def all_reduce(self, input_: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(input_, group=self.device_group)
        return input_

    def all_gather(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
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
        tensors = input_ if isinstance(input_, list) else [input_]
        gathered = [self._gather_uneven(t, dim, sizes) for t in tensors]
        return gathered if isinstance(input_, list) else gathered[0]

    def _gather_uneven(self, tensor: torch.Tensor, dim: int,
                       sizes: list[int] | None) -> torch.Tensor:
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
        # gloo has no reduce_scatter, nor any backend an uneven one: reduce
        # everywhere, keep this rank's slice.
        total = input_.clone()
        dist.all_reduce(total, group=self.device_group)
        if sizes is None:
            return total.chunk(self.world_size, dim=dim)[self.rank_in_group].contiguous()
        return total.split(sizes, dim=dim)[self.rank_in_group].contiguous()

    def all_to_all(self, input_: torch.Tensor, scatter_sizes: list[int] | None = None,
                   gather_sizes: list[int] | None = None) -> torch.Tensor:
        """Rank r's i-th slice of ``input_`` (dim 0) goes to rank i, and the
        output holds the slices every rank sent r, in rank order. Without
        sizes the slices are equal; with them, ``scatter_sizes[i]`` rows go to
        rank i and ``gather_sizes[i]`` rows come from it (uneven MoE routing)."""
        if (scatter_sizes is None) != (gather_sizes is None):
            raise ValueError("all_to_all: give both scatter_sizes and gather_sizes, or neither")
        if scatter_sizes is None or gather_sizes is None:
            if input_.shape[0] % self.world_size:
                raise ValueError(f"all_to_all: {input_.shape[0]} rows do not split evenly "
                                 f"over {self.world_size} ranks; give the sizes")
            rows = input_.shape[0]
        else:
            if len(scatter_sizes) != self.world_size or len(gather_sizes) != self.world_size:
                raise ValueError(f"all_to_all: sizes need one entry per rank "
                                 f"({self.world_size})")
            if sum(scatter_sizes) != input_.shape[0]:
                raise ValueError(f"all_to_all: scatter_sizes sum to {sum(scatter_sizes)}, "
                                 f"the input has {input_.shape[0]} rows")
            rows = sum(gather_sizes)
        if self.world_size == 1:
            return input_
        output = input_.new_empty((rows, *input_.shape[1:]))
        dist.all_to_all_single(output, input_.contiguous(), output_split_sizes=gather_sizes,
                               input_split_sizes=scatter_sizes, group=self.device_group)
        return output
