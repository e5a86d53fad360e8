"""vllm-ascend's worker: vLLM's GPU worker on an NPU, emulated or not.

:class:`NPUWorker` is vLLM's own worker with the device set up for an NPU:
``npu:<local rank>``, HCCL between workers; memory profiling (a dummy forward
pass at the largest batch, vLLM's ``memory_profiling`` through
``torch.accelerator``, which torch_npu implements) sizes the KV cache. Under
emulation the same worker runs with the device runtime emulated
(:mod:`vllm_ascend.emulated.runtime`): the tensors on the host, gloo between
workers, the memory statistics those of a device of ``VLLM_ASCEND_DEVICE_MEMORY``,
counted through every start-up phase (the platform's ``memory_accounting``).
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import torch
from vllm.config import VllmConfig
from vllm.utils.mem_utils import MemorySnapshot
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment
from vllm.v1.worker.utils import request_memory

from vllm_ascend import get_logger, ops, patches
from vllm_ascend.model_runner import NPUModelRunner

logger = get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _accounted(method: F) -> F:
    """A start-up phase: the device's memory is accounted while it runs."""

    @functools.wraps(method)
    def phase(self: Worker, *args: Any, **kwargs: Any) -> Any:
        from vllm.platforms import current_platform

        with current_platform.memory_accounting(self):
            return method(self, *args, **kwargs)

    return phase  # type: ignore[return-value]


def kernel_warmup(worker: Worker, *, process_local_only: bool = False) -> None:
    """vLLM's kernel warm-up as it applies to an NPU: the JIT kernels vLLM
    registered, each overridden by the plugin (their warm-up a no-op). The rest
    of vLLM's warm-up tunes CUDA and Triton kernels, and imports the models they
    serve (some need torchvision); an NPU has none of them."""
    if worker.vllm_config.kernel_config.enable_jit_warmup:
        worker.model_runner.jit_warmup_registry.warmup()


class NPUWorker(Worker):
    """vLLM's GPU worker on an Ascend NPU."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        local_rank: int,
        rank: int,
        distributed_init_method: str,
        is_driver_worker: bool = False,
    ) -> None:
        ops.register()
        patches.apply_to_worker()
        super().__init__(vllm_config, local_rank, rank, distributed_init_method,
                         is_driver_worker=is_driver_worker)

    @_accounted
    def init_device(self) -> None:
        """What vLLM's worker does for a CUDA device, for ``npu:<local rank>``."""
        from vllm.platforms import current_platform

        parallel = self.parallel_config
        if parallel.distributed_executor_backend not in ("ray", "external_launcher"):
            # ranks of other data-parallel replicas on this host come after ours
            dp_local_rank = parallel.data_parallel_rank_local
            if dp_local_rank is None:
                dp_local_rank = parallel.data_parallel_index
            self.local_rank += dp_local_rank * (parallel.pipeline_parallel_size
                                                * parallel.tensor_parallel_size)
        self.device = current_platform.worker_device(self.local_rank)
        current_platform.set_device(self.device)
        current_platform.check_if_supports_dtype(self.model_config.dtype)
        # HCCL's buffers first, so the memory snapshot below accounts for them
        init_worker_distributed_environment(
            self.vllm_config, self.rank, self.distributed_init_method, self.local_rank,
            current_platform.dist_backend)
        set_random_seed(self.model_config.seed)
        gc.collect()
        torch.accelerator.empty_cache()
        self.init_snapshot = MemorySnapshot(device=self.device)
        self.requested_memory = request_memory(self.init_snapshot, self.cache_config)
        self._init_workspace_and_model_runner()

    def _make_model_runner(self) -> NPUModelRunner:
        if self.use_v2_model_runner:
            logger.warning("vllm-ascend uses vLLM's V1 model runner; ignoring the V2 request")
        return NPUModelRunner(self.vllm_config, self.device)

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # vLLM's sleep-mode pool (CuMem, XPU) has no NPU form, and vLLM refuses
        # --enable-sleep-mode on a platform without one; vLLM's own method
        # raises for any platform it does not know, sleep mode or not
        return nullcontext()

    @_accounted
    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        from vllm.platforms import current_platform

        super().load_model(load_dummy_weights=load_dummy_weights)
        current_platform.on_model_loaded(self)

    @_accounted
    def determine_available_memory(self) -> int:
        """vLLM's profile, less the decode graphs' memory.

        vLLM measures the memory its graphs will hold (capturing the first two
        of each mode on a minimal KV cache) for CUDA, ROCm and XPU devices only;
        on an NPU the ACL graphs would be captured after the KV cache took
        everything the budget left, and the device would run over it. The
        estimate is vLLM's own, made through the ACL graph wrapper.
        """
        import vllm.envs as envs
        from vllm.config import CUDAGraphMode

        available = super().determine_available_memory()
        if (self.cache_config.kv_cache_memory_bytes
                or self.compilation_config.cudagraph_mode == CUDAGraphMode.NONE
                or not envs.VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS):
            return available
        estimate = self.model_runner.profile_cudagraph_memory()
        self.cudagraph_memory_estimate = estimate
        self.peak_activation_memory += estimate
        self.available_kv_cache_memory_bytes = available - estimate
        logger.info("vllm-ascend: %.3f GiB for ACL graphs, %.3f GiB left for the KV cache",
                    estimate / (1 << 30), self.available_kv_cache_memory_bytes / (1 << 30))
        return self.available_kv_cache_memory_bytes

    @_accounted
    def initialize_from_config(self, kv_cache_config: Any) -> None:
        super().initialize_from_config(kv_cache_config)

    @_accounted
    def compile_or_warm_up_model(self) -> Any:
        return super().compile_or_warm_up_model()
