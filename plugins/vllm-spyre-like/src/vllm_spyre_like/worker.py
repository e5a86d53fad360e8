"""The worker: one per device, it owns the model runner and the KV cache.

It subclasses vLLM's CPU worker because this stand-in runs on the CPU. For a
real device, ``init_device`` binds the process to its device and
``determine_available_memory`` measures the device's free memory after a
profiling run; until then the KV cache is sized from a fixed simulated
capacity, so the number of KV blocks is the same on every machine.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from vllm.config import VllmConfig
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.kv_cache_interface import KVCacheConfig
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment

from vllm_spyre_like import PLUGIN, get_logger
from vllm_spyre_like.envs import ENV_MEMORY, batching_mode, device_memory
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

    def _set_threads(self) -> None:
        """The host's cores, shared by the workers of this machine, unless the user
        set OMP_NUM_THREADS: this stand-in runs the model itself on the host."""
        from vllm.utils.torch_utils import OMP_NUM_THREADS_SET_BY_VLLM

        user = os.environ.get("OMP_NUM_THREADS", "").strip()
        if user.isdigit() and int(user) > 0 and OMP_NUM_THREADS_SET_BY_VLLM not in os.environ:
            threads = int(user)
        else:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
                else os.cpu_count() or 1
            local_workers = self.parallel_config.tensor_parallel_size * \
                self.parallel_config.pipeline_parallel_size
            threads = max(1, cores // local_workers)
        torch.set_num_threads(threads)

    def init_device(self) -> None:
        from vllm.platforms import current_platform

        # Your device: torch.device(f"<type>:{self.local_rank}") and set it current.
        self.device = torch.device("cpu")
        self._set_threads()
        init_worker_distributed_environment(
            self.vllm_config, self.rank, self.distributed_init_method,
            self.local_rank, current_platform.dist_backend,
        )
        set_random_seed(self.model_config.seed)
        self.model_runner = SpyreLikeModelRunner(self.vllm_config, self.device)

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)
        # vLLM drops torch to one thread after loading, as on accelerators no host
        # op of a step gains from more; here the model runs on the host.
        self._set_threads()

    def initialize_from_config(self, kv_cache_config: KVCacheConfig) -> None:
        self.num_kv_blocks = kv_cache_config.num_blocks
        super().initialize_from_config(kv_cache_config)

    def check_continuous_limits(self) -> None:
        """Continuous batching must hold max_num_seqs sequences of max_model_len
        tokens in the KV cache at once, or its decode batches cannot fill."""
        block_size = self.cache_config.block_size
        max_len = self.model_config.max_model_len
        max_seqs = self.scheduler_config.max_num_seqs
        needed = max_seqs * -(-max_len // block_size)
        available = self.num_kv_blocks - 1  # block 0 is vLLM's null block
        if available < needed:
            raise ValueError(
                f"{PLUGIN} continuous batching: max_num_seqs={max_seqs} sequences of "
                f"max_model_len={max_len} tokens need {needed} KV blocks of {block_size} "
                f"tokens, but the device memory holds {available}; lower --max-num-seqs or "
                f"--max-model-len, or raise {ENV_MEMORY}"
            )

    def compile_or_warm_up_model(self) -> Any:
        """Compile every shape's graph and run it once before the engine serves."""
        if batching_mode(self.vllm_config.additional_config) == "continuous":
            self.check_continuous_limits()
        start = time.perf_counter()
        self.model_runner.warm_up_graphs()
        seconds = time.perf_counter() - start
        self.compilation_config.compilation_time += seconds
        logger.info("%s: warmup of %d graphs took %.1f s", PLUGIN,
                    len(self.model_runner.warmup_times), seconds)
        return super().compile_or_warm_up_model()

    def compile_stats(self) -> dict[str, Any]:
        return self.model_runner.compile_stats()

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
