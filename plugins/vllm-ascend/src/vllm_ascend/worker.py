"""vllm-ascend's workers: vLLM's GPU worker on an NPU, its CPU worker emulated.

:class:`NPUWorker` is vLLM's own worker with the device set up for an NPU:
``npu:<local rank>``, HCCL between workers; memory profiling (a dummy forward
pass at the largest batch, vLLM's ``memory_profiling`` through
``torch.accelerator``, which torch_npu implements) sizes the KV cache.

:class:`EmulatedNPUWorker` runs on the host with a fixed emulated capacity
(``VLLM_ASCEND_DEVICE_MEMORY``): the KV cache gets what the capacity leaves
after the weights and a deterministic activation reserve, so the number of KV
blocks depends only on the settings and the model, as it would on a device of
that size.
"""

from __future__ import annotations

import gc
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import psutil
import torch
from vllm.config import VllmConfig
from vllm.distributed.parallel_state import get_tp_group
from vllm.utils.mem_utils import MemorySnapshot
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment
from vllm.v1.worker.utils import request_memory

from vllm_ascend import get_logger, ops
from vllm_ascend.envs import ENV_MEMORY, AscendConfig, usable_cores
from vllm_ascend.model_runner import EmulatedNPUModelRunner, NPUModelRunner

logger = get_logger(__name__)

GiB = 1 << 30


def activation_reserve(vllm_config: VllmConfig) -> int:
    """Bytes set aside for activations of the largest step, by formula.

    The widest tensors of one step: the hidden state, QKV and the MLP's
    gate/up product for every scheduled token, and fp32 logits for every
    sequence, with a factor of two for temporaries.
    """
    model = vllm_config.model_config
    hf = model.hf_text_config
    tokens = vllm_config.scheduler_config.max_num_batched_tokens
    seqs = vllm_config.scheduler_config.max_num_seqs
    hidden = model.get_hidden_size()
    head = model.get_head_size()
    q_kv = (hf.num_attention_heads + 2 * getattr(hf, "num_key_value_heads",
                                                  hf.num_attention_heads)) * head
    inter = getattr(hf, "intermediate_size", 4 * hidden)
    per_token = (4 * hidden + q_kv + 2 * inter) * model.dtype.itemsize
    return 2 * (tokens * per_token + seqs * model.get_vocab_size() * 4)


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


class EmulatedNPUWorker(CPUWorker):
    """vLLM's CPU worker without its compiled kernels, with the emulated NPU's memory."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        local_rank: int,
        rank: int,
        distributed_init_method: str,
        is_driver_worker: bool = False,
    ) -> None:
        ops.register()
        # CPUWorker.__init__ binds NUMA memory through a compiled kernel
        # (torch.ops._C.init_cpu_memory_env) that the empty vLLM build lacks
        # and that an emulated device does not need, so go to Worker directly.
        Worker.__init__(
            self, vllm_config, local_rank, rank, distributed_init_method,
            is_driver_worker=is_driver_worker,
        )
        self.parallel_config.disable_custom_all_reduce = True
        self.sim = AscendConfig.load(vllm_config.additional_config)

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # vLLM's CuMem pool (sleep mode) exists only for CUDA devices.
        return nullcontext()

    def _set_threads(self) -> None:
        threads = self.sim.num_threads
        if threads is None:
            cores = usable_cores()
            local_workers = self.parallel_config.tensor_parallel_size * \
                self.parallel_config.pipeline_parallel_size
            threads = max(1, cores // local_workers)
        torch.set_num_threads(threads)

    def init_device(self) -> None:
        from vllm.platforms import current_platform

        self.device = torch.device("cpu")
        current_platform.check_if_supports_dtype(self.model_config.dtype)
        self._set_threads()
        init_worker_distributed_environment(
            self.vllm_config, self.rank, self.distributed_init_method,
            self.local_rank, current_platform.dist_backend,
        )
        set_random_seed(self.model_config.seed)
        if self.use_v2_model_runner:
            logger.warning("vllm-ascend uses vLLM's V1 model runner; ignoring the V2 request")
        self.model_runner = EmulatedNPUModelRunner(self.vllm_config, self.device)

    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        super().load_model(load_dummy_weights=load_dummy_weights)
        # vLLM drops torch to one thread after loading, because on accelerators
        # no host op of the step benefits from more; emulated, the model runs
        # on the host, so give it back its threads.
        self._set_threads()

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

    def _weights_bytes(self) -> int:
        model = self.model_runner.get_model()
        tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def determine_available_memory(self) -> int:
        capacity = self.sim.device_memory
        budget = int(capacity * self.cache_config.gpu_memory_utilization)
        weights = self._weights_bytes()
        reserve = activation_reserve(self.vllm_config)
        explicit = self.cache_config.kv_cache_memory_bytes
        kv_bytes = explicit if explicit is not None else budget - weights - reserve
        # One block of every layer is the least a KV cache can hold.
        one_block = sum(spec.page_size_bytes
                        for spec in self.model_runner.get_kv_cache_spec().values())
        if kv_bytes < one_block or (explicit is not None and explicit > capacity - weights):
            raise ValueError(
                f"The emulated NPU memory {capacity / GiB:.3f} GiB "
                f"({ENV_MEMORY} or additional_config.ascend.device_memory) × "
                f"gpu_memory_utilization {self.cache_config.gpu_memory_utilization} "
                f"leaves less than one KV block ({one_block} bytes) after "
                f"{weights / GiB:.3f} GiB of "
                f"weights and {reserve / GiB:.3f} GiB reserved for activations; "
                f"raise {ENV_MEMORY}"
            )
        host_free = psutil.virtual_memory().available
        if kv_bytes > host_free:
            raise ValueError(
                f"A KV cache of {kv_bytes / GiB:.2f} GiB does not fit the "
                f"{host_free / GiB:.2f} GiB of free host memory; lower {ENV_MEMORY} "
                "or --gpu-memory-utilization"
            )
        logger.info(
            "vllm-ascend emulated NPU memory %.2f GiB: weights %.3f GiB, activation reserve "
            "%.3f GiB, KV cache %.3f GiB (rank %d of %d)",
            capacity / GiB, weights / GiB, reserve / GiB, kv_bytes / GiB,
            self.rank, get_tp_group().world_size,
        )
        return kv_bytes
