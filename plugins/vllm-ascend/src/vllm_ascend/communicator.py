"""Collectives between vllm-ascend workers: HCCL on NPUs, gloo when emulated.

On NPUs vLLM's base communicator does the work over HCCL. Emulated workers
talk over gloo, which lacks the ``*_into_tensor`` collectives the base class
calls; there these forms use the list collectives gloo has. The uneven forms
(``all_gatherv``, ``reduce_scatterv``), which the base class leaves out, use
the list collectives on both. ``all_to_all`` is one ``all_to_all_single`` on
either.

With data parallelism, MoE layers get every data-parallel rank's tokens before
their experts run and give each rank its tokens' sums back after
(``dispatch_router_logits`` and ``combine``): vLLM's all-gather /
reduce-scatter manager (``--all2all-backend allgather_reducescatter``) does
this over the uneven collectives here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed import ProcessGroup
from vllm.distributed.device_communicators.base_device_communicator import (
    DeviceCommunicatorBase,
)


class NPUCommunicator(DeviceCommunicatorBase):
    def __init__(self, cpu_group: ProcessGroup, device: torch.device | None = None,
                 device_group: ProcessGroup | None = None, unique_name: str = "",
                 use_all2all: bool = False) -> None:
        super().__init__(cpu_group, device, device_group, unique_name,
                         use_all2all=use_all2all)
        if self.use_all2all:  # the expert-parallel group, with data parallelism
            from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager

            self.all2all_manager = AgRsAll2AllManager(self.cpu_group)

    def dispatch_router_logits(
        self, hidden_states: torch.Tensor, router_logits: torch.Tensor,
        is_sequence_parallel: bool = False, extra_tensors: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, ...] | tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        if self.all2all_manager is None:
            return super().dispatch_router_logits(hidden_states, router_logits,
                                                  is_sequence_parallel, extra_tensors)
        return self.all2all_manager.dispatch_router_logits(
            hidden_states, router_logits, is_sequence_parallel, extra_tensors)

    def dispatch(
        self, hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
        is_sequence_parallel: bool = False, extra_tensors: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, ...] | tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                          list[torch.Tensor]]:
        if self.all2all_manager is None:
            return super().dispatch(hidden_states, topk_weights, topk_ids,
                                    is_sequence_parallel, extra_tensors)
        return self.all2all_manager.dispatch(hidden_states, topk_weights, topk_ids,
                                             is_sequence_parallel, extra_tensors)

    def combine(self, hidden_states: torch.Tensor,
                is_sequence_parallel: bool = False) -> torch.Tensor:
        if self.all2all_manager is None:
            return super().combine(hidden_states, is_sequence_parallel)
        return self.all2all_manager.combine(hidden_states, is_sequence_parallel)

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
        if sizes is None and not self._on_gloo():
            return super().reduce_scatter(input_, dim)
        # gloo has no reduce_scatter, nor either backend an uneven one: reduce
        # everywhere, keep this rank's slice.
        total = input_.clone()
        dist.all_reduce(total, group=self.device_group)
        if sizes is None:
            return total.chunk(self.world_size, dim=dim)[self.rank_in_group].contiguous()
        return total.split(sizes, dim=dim)[self.rank_in_group].contiguous()
