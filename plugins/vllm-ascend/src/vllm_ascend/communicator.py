"""Collectives between vllm-ascend workers: HCCL on NPUs, gloo when emulated.

On NPUs vLLM's base communicator does the work over HCCL. Emulated workers
talk over gloo, which lacks the ``*_into_tensor`` collectives the base class
calls; there the kit's gloo forms (:class:`vllm_plugin_kit.communicator.GlooCommunicator`)
use the list collectives gloo has. The uneven forms (``all_gatherv``,
``reduce_scatterv``), which the base class leaves out, use the list collectives
on both. ``all_to_all`` is one ``all_to_all_single`` on either.

With data parallelism, MoE layers get every data-parallel rank's tokens before
their experts run and give each rank its tokens' sums back after
(``dispatch_router_logits`` and ``combine``): vLLM's all-gather /
reduce-scatter manager (``--all2all-backend allgather_reducescatter``) does
this over the uneven collectives here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from vllm.distributed.device_communicators.base_device_communicator import (
    DeviceCommunicatorBase,
)
from vllm_plugin_kit.communicator import GlooCommunicator


class NPUCommunicator(GlooCommunicator):
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
            return DeviceCommunicatorBase.all_reduce(self, input_)
        return super().all_reduce(input_)

    def all_gather(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if not self._on_gloo():
            return DeviceCommunicatorBase.all_gather(self, input_, dim)
        return super().all_gather(input_, dim)

    def reduce_scatter(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if not self._on_gloo():
            return DeviceCommunicatorBase.reduce_scatter(self, input_, dim)
        return super().reduce_scatter(input_, dim)

    def reduce_scatterv(
        self, input_: torch.Tensor, dim: int = -1, sizes: list[int] | None = None
    ) -> torch.Tensor:
        if sizes is None and not self._on_gloo():
            return DeviceCommunicatorBase.reduce_scatter(self, input_, dim)
        # neither backend has an uneven reduce-scatter: the kit's form reduces
        # everywhere and keeps this rank's slice
        return super().reduce_scatterv(input_, dim, sizes)
