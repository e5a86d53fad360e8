"""The worker: one per device, it owns the model runner and the KV cache.

It subclasses vLLM's CPU worker because this stand-in runs on the CPU. For a
real device, ``init_device`` binds the process to its device and
``determine_available_memory`` measures the device's free memory after a
profiling run; until then the KV cache is sized from a fixed simulated
capacity, so the number of KV blocks is the same on every machine.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from vllm.config import VllmConfig
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment

from vllm_spyre_like import PLUGIN, get_logger
from vllm_spyre_like.envs import ENV_MEMORY, device_memory
from vllm_spyre_like.model_runner import SpyreLikeModelRunner

logger = get_logger(__name__)

GiB = 1 << 30
#: Set aside for the activations of the largest step. Your device: measure the
#: peak of a profiling run (``self.model_runner.profile_run()``) instead.
ACTIVATION_RESERVE = 256 << 20


class SpyreLikeWorker(CPUWorker):
    def __init__(
        self,
        vllm_config: VllmConfig,
        local_rank: int,
        rank: int,
        distributed_init_method: str,
        is_driver_worker: bool = False,
    ) -> None:
        # CPUWorker.__init__ binds NUMA memory through a compiled kernel
        # (torch.ops._C.init_cpu_memory_env) that the empty vLLM build lacks,
        # so skip it and initialise as vLLM's base GPU worker does.
        Worker.__init__(
            self, vllm_config, local_rank, rank, distributed_init_method,
            is_driver_worker=is_driver_worker,
        )
        self.parallel_config.disable_custom_all_reduce = True

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # vLLM's CuMem pool (sleep mode) exists only for CUDA and XPU devices.
        return nullcontext()

    def init_device(self) -> None:
        from vllm.platforms import current_platform

        # Your device: torch.device(f"<type>:{self.local_rank}") and set it current.
        self.device = torch.device("cpu")
        init_worker_distributed_environment(
            self.vllm_config, self.rank, self.distributed_init_method,
            self.local_rank, current_platform.dist_backend,
        )
        set_random_seed(self.model_config.seed)
        self.model_runner = SpyreLikeModelRunner(self.vllm_config, self.device)

    def _weights_bytes(self) -> int:
        model = self.model_runner.get_model()
        tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def determine_available_memory(self) -> int:
        """Bytes for the KV cache: the simulated capacity × gpu_memory_utilization,
        minus the weights and the activation reserve."""
        explicit = self.cache_config.kv_cache_memory_bytes
        if explicit is not None:
            return explicit
        capacity = device_memory()
        weights = self._weights_bytes()
        kv_bytes = int(capacity * self.cache_config.gpu_memory_utilization) \
            - weights - ACTIVATION_RESERVE
        if kv_bytes <= 0:
            raise ValueError(
                f"{ENV_MEMORY}={capacity / GiB:.2f} GiB leaves no room for the KV cache "
                f"after {weights / GiB:.2f} GiB of weights and "
                f"{ACTIVATION_RESERVE / GiB:.2f} GiB for activations; raise it"
            )
        logger.info("%s: %.2f GiB device memory, %.3f GiB weights, %.3f GiB KV cache",
                    PLUGIN, capacity / GiB, weights / GiB, kv_bytes / GiB)
        return kv_bytes
