"""vllm-ascend's workers: vLLM's GPU worker on an NPU, its CPU worker emulated.

:class:`NPUWorker` is vLLM's own worker with the device set up for an NPU:
``npu:<local rank>``, HCCL between workers; memory profiling (a dummy forward
pass at the largest batch, vLLM's ``memory_profiling`` through
``torch.accelerator``, which torch_npu implements) sizes the KV cache.

:class:`EmulatedNPUWorker` runs on the host with a fixed emulated capacity
(``VLLM_ASCEND_DEVICE_MEMORY``): the kit's host worker gives the KV cache what
the capacity leaves after the weights and a deterministic activation reserve,
so the number of KV blocks depends only on the settings and the model, as it
would on a device of that size.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch
from vllm.config import VllmConfig
from vllm.utils.mem_utils import MemorySnapshot
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment
from vllm.v1.worker.utils import request_memory
from vllm_plugin_kit.worker import HostWorker

from vllm_ascend import get_logger, ops
from vllm_ascend.envs import SETTINGS
from vllm_ascend.model_runner import EmulatedNPUModelRunner, NPUModelRunner

logger = get_logger(__name__)

GiB = 1 << 30


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
        super().__init__(vllm_config, local_rank, rank, distributed_init_method,
                         is_driver_worker=is_driver_worker)

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
        self.device = torch.device(f"npu:{self.local_rank}")
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


class EmulatedNPUWorker(HostWorker):
    """The kit's host worker (vLLM's CPU worker without its compiled kernels)
    with the emulated NPU's memory, layers, model runner and ACL graphs."""

    settings = SETTINGS
    plugin = "vllm-ascend"
    device_label = "emulated NPU"

    def register_custom_ops(self) -> None:
        ops.register()

    def make_model_runner(self) -> EmulatedNPUModelRunner:
        return EmulatedNPUModelRunner(self.vllm_config, self.device)

    def compile_or_warm_up_model(self) -> Any:
        # vLLM's CPU worker captures no graphs; the emulated NPU's decode
        # steps run as emulated ACL graphs. Captured first: vLLM's warm-up
        # then resets the random seed.
        start = time.perf_counter()
        self.model_runner.capture_model()
        if self.compilation_config.cudagraph_mode.has_full_cudagraphs():
            logger.info("vllm-ascend captured emulated ACL graphs of decode batches %s in "
                        "%.1f s", self.compilation_config.cudagraph_capture_sizes,
                        time.perf_counter() - start)
        return super().compile_or_warm_up_model()
