"""The host worker: vLLM's CPU worker, minus its compiled kernels, over a device of fixed memory.

The stand-in device has the capacity the settings give (``device_memory``).
The KV cache gets what that capacity leaves after the weights and an
activation reserve computed from the configuration, so the number of KV
blocks, and with it preemption, depends only on the settings and the model,
never on what else the host is doing. A real device measures instead: its
worker is vLLM's GPU ``Worker`` (vllm-ascend's ``NPUWorker`` is the worked
example).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import psutil
import torch
from vllm.config import CompilationMode, VllmConfig
from vllm.distributed.parallel_state import get_tp_group
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment

from vllm_plugin_kit import get_logger
from vllm_plugin_kit.settings import SettingsTable, thread_count

logger = get_logger(__name__)

GiB = 1 << 30


def activation_reserve(vllm_config: VllmConfig) -> int:
    """Bytes set aside for the activations of the largest step, by formula.

    The widest tensors of one step: the hidden state, QKV and the MLP's
    gate/up product for every scheduled token, and float32 logits for every
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


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each tensor counted once."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class HostWorker(CPUWorker):
    """vLLM's CPU worker for a device stood in for on the host.

    A plugin's subclass sets :attr:`settings` (which holds the kit's
    ``device_settings``), :attr:`plugin` and :meth:`make_model_runner`.
    """

    settings: ClassVar[SettingsTable]
    plugin: ClassVar[str]
    #: what messages call the stand-in device
    device_label: ClassVar[str] = "simulated device"

    def __init__(
        self,
        vllm_config: VllmConfig,
        local_rank: int,
        rank: int,
        distributed_init_method: str,
        is_driver_worker: bool = False,
    ) -> None:
        self.register_custom_ops()
        # CPUWorker.__init__ binds NUMA memory through a compiled kernel
        # (torch.ops._C.init_cpu_memory_env) that the empty vLLM build lacks
        # and that a stand-in device does not need, so go to Worker directly.
        Worker.__init__(
            self, vllm_config, local_rank, rank, distributed_init_method,
            is_driver_worker=is_driver_worker,
        )
        self.parallel_config.disable_custom_all_reduce = True
        self.host_settings = self.settings.resolve(vllm_config.additional_config)

    def register_custom_ops(self) -> None:
        """Put the plugin's layers in vLLM's out-of-tree registry, before any model
        is built in this process."""

    def make_model_runner(self) -> Any:
        raise NotImplementedError

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # vLLM's CuMem pool (sleep mode) exists only for CUDA devices.
        return nullcontext()

    def set_threads(self) -> int:
        threads = thread_count(self.host_settings["num_threads"],
                               self.parallel_config.tensor_parallel_size,
                               self.parallel_config.pipeline_parallel_size)
        torch.set_num_threads(threads)
        return threads

    def init_device(self) -> None:
        from vllm.platforms import current_platform

        self.device = torch.device("cpu")
        current_platform.check_if_supports_dtype(self.model_config.dtype)
        self.set_threads()
        init_worker_distributed_environment(
            self.vllm_config, self.rank, self.distributed_init_method,
            self.local_rank, current_platform.dist_backend,
        )
        set_random_seed(self.model_config.seed)
        if self.use_v2_model_runner:
            logger.warning("%s uses vLLM's V1 model runner; ignoring the V2 request",
                           self.plugin)
        self.model_runner = self.make_model_runner()

    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        super().load_model(load_dummy_weights=load_dummy_weights)
        # vLLM drops torch to one thread after loading, because on accelerators
        # no host op of the step benefits from more; here the model itself
        # runs on the host, so give it back its threads.
        self.set_threads()

    def weights_bytes(self) -> int:
        """What the loaded model's weights take of the device memory."""
        return weights_bytes(self.model_runner.get_model())

    def determine_available_memory(self) -> int:
        if self.compilation_config.mode != CompilationMode.NONE:
            # As vLLM's CPU worker: compile now, not in the first request.
            self.model_runner.warming_up_model()
        capacity = self.host_settings["device_memory"]
        setting = self.settings.where("device_memory")
        budget = int(capacity * self.cache_config.gpu_memory_utilization)
        weights = self.weights_bytes()
        reserve = activation_reserve(self.vllm_config)
        explicit = self.cache_config.kv_cache_memory_bytes
        kv_bytes = explicit if explicit is not None else budget - weights - reserve
        # One block of every layer is the least a KV cache can hold.
        one_block = sum(spec.page_size_bytes
                        for spec in self.model_runner.get_kv_cache_spec().values())
        if kv_bytes < one_block or (explicit is not None and explicit > capacity - weights):
            raise ValueError(
                f"The {self.device_label} memory {capacity / GiB:.3f} GiB ({setting}) × "
                f"gpu_memory_utilization {self.cache_config.gpu_memory_utilization} "
                f"leaves less than one KV block ({one_block} bytes) after "
                f"{weights / GiB:.3f} GiB of weights and {reserve / GiB:.3f} GiB reserved "
                f"for activations; raise {setting.split(' or ')[0]}"
            )
        host_free = psutil.virtual_memory().available
        if kv_bytes > host_free:
            raise ValueError(
                f"A KV cache of {kv_bytes / GiB:.2f} GiB does not fit the "
                f"{host_free / GiB:.2f} GiB of free host memory; lower "
                f"{setting.split(' or ')[0]} or --gpu-memory-utilization"
            )
        logger.info(
            "%s %s memory %.2f GiB: weights %.3f GiB, activation reserve %.3f GiB, "
            "KV cache %.3f GiB (rank %d of %d)", self.plugin, self.device_label,
            capacity / GiB, weights / GiB, reserve / GiB, kv_bytes / GiB,
            self.rank, get_tp_group().world_size,
        )
        return kv_bytes
