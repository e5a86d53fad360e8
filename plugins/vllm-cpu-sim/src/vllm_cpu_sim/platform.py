"""The cpu_sim platform: vLLM's V1 engine on the CPU through the out-of-tree path.

The platform uses the ``OOT`` enum rather than ``CPU`` on purpose: vLLM gives
``CPU`` platforms code paths (custom ops, sampler, linear layers) that call
compiled ``torch.ops._C`` kernels, which the pure-Python ("empty") build of
vLLM does not ship. As ``OOT`` every layer runs its PyTorch form unless this
plugin registers a faster one (see ``ops``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import psutil
import torch
from vllm.platforms.interface import Platform, PlatformEnum

from vllm_cpu_sim import get_logger
from vllm_cpu_sim.envs import (
    ENV_ENABLE,
    ENV_MEMORY,
    ENV_PACKED_LINEAR,
    ENV_THREADS,
    SimConfig,
    usable_cores,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig

logger = get_logger(__name__)

#: Block size when the user gives none: small enough that prefix-cache hits
#: and preemption show on short prompts, large enough to keep tables short.
DEFAULT_BLOCK_SIZE = 16


class CpuSimPlatform(Platform):
    _enum = PlatformEnum.OOT
    # vLLM builds torch devices from both names, so both are torch's "cpu":
    # the simulated device's tensors live in host memory.
    device_name: str = "cpu"
    device_type: str = "cpu"
    dispatch_key: str = "CPU"
    dist_backend: str = "gloo"
    # vLLM's Ray executors look workers' devices up among the accelerator
    # resources Ray knows, which a custom resource is not; each simulated
    # device is therefore one logical Ray "GPU" (`ray start --num-gpus N`).
    # No GPU is touched: Ray only counts it.
    ray_device_key: str = "GPU"
    device_control_env_var: str = "VLLM_CPU_SIM_VISIBLE_DEVICES"
    simple_compile_backend: str = "inductor"
    supported_quantization: list[str] = []  # noqa: RUF012 (vLLM declares it so)
    # known to vLLM's environment check, and passed on to Ray workers
    additional_env_vars: list[str] = [  # noqa: RUF012
        ENV_ENABLE, ENV_MEMORY, ENV_THREADS, ENV_PACKED_LINEAR,
    ]

    @property
    def supported_dtypes(self) -> list[torch.dtype]:
        # The first entry is the fallback for "auto" on unsupported model dtypes.
        return [torch.bfloat16, torch.float32]

    @classmethod
    def check_if_supports_dtype(cls, dtype: torch.dtype) -> None:
        if dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(
                f"cpu_sim does not support dtype={str(dtype).removeprefix('torch.')}; "
                "use --dtype float32 or --dtype bfloat16"
            )

    @classmethod
    def device_count(cls) -> int:
        """Simulated devices on this host: one per usable core."""
        return usable_cores()

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return "cpu_sim"

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        # additional_config counts once a vLLM config is current, as in the worker
        from vllm.config import get_current_vllm_config_or_none

        config = get_current_vllm_config_or_none()
        return SimConfig.load(config.additional_config if config else None).device_memory

    @classmethod
    def get_current_memory_usage(cls, device: torch.types.Device | None = None) -> float:
        return float(psutil.Process(os.getpid()).memory_info().rss)

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        pass

    @classmethod
    def manual_seed_all(cls, seed: int) -> None:
        # torch.manual_seed already seeds the CPU generator; no device to seed.
        pass

    @classmethod
    def get_pass_manager_cls(cls) -> str:
        return "vllm_cpu_sim.passes.CpuSimPassManager"

    @classmethod
    def inference_mode(cls):
        # Inference tensors cannot be updated in place outside inference mode,
        # which the KV cache and persistent batch buffers are; no_grad is enough.
        return torch.no_grad()

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        return False

    @classmethod
    def get_attn_backend_cls(
        cls,
        selected_backend: AttentionBackendEnum | None,
        attn_selector_config: AttentionSelectorConfig,
        num_heads: int | None = None,
    ) -> str:
        if attn_selector_config.use_mla:
            raise NotImplementedError("cpu_sim has no MLA attention backend")
        if attn_selector_config.use_sparse:
            raise NotImplementedError("cpu_sim has no sparse attention backend")
        if selected_backend is not None:
            logger.info("cpu_sim ignores attention backend %s; using CPU_SIM_ATTN",
                        selected_backend)
        return "vllm_cpu_sim.attention.CpuSimAttentionBackend"

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        return "vllm_cpu_sim.communicator.CpuSimCommunicator"

    @classmethod
    def opaque_attention_op(cls) -> bool:
        # Keep attention one opaque op so graph capture never traces into it.
        return True

    @classmethod
    def support_hybrid_kv_cache(cls) -> bool:
        return False

    @classmethod
    def supports_structured_output(cls) -> bool:
        return True

    @classmethod
    def num_compute_units(cls, device_id: int = 0) -> int:
        return torch.get_num_threads()

    @classmethod
    def import_kernels(cls) -> None:
        # vLLM's default imports vllm._C, which the empty build lacks, and warns.
        # There are no compiled kernels here; the custom ops are registered by
        # the worker before it builds the model.
        pass

    @classmethod
    def log_warnings(cls) -> None:
        # vLLM resolves the platform before it configures logging, so its own
        # "Platform plugin ... is activated" line is usually lost; say it here,
        # where vLLM calls back once logging is up. The device memory is logged
        # by check_and_update_config, once additional_config is known.
        from vllm_cpu_sim import __version__

        logger.info("Platform plugin cpu_sim is activated (vllm-cpu-sim %s)", __version__)

    @classmethod
    def validate_environ(cls, hard_fail: bool) -> None:
        # vLLM's check flags every VLLM_* variable it does not know itself;
        # this platform's own settings are known here.
        from vllm import envs

        for env in os.environ:
            if (env.startswith("VLLM_") and env not in envs.environment_variables
                    and env not in cls.additional_env_vars):
                if hard_fail:
                    raise ValueError(f"Unknown vLLM environment variable detected: {env}")
                logger.warning("Unknown vLLM environment variable detected: %s", env)

    @classmethod
    def register_triton_kernel_overrides(cls) -> None:
        from vllm.triton_utils.dispatcher import register_kernels

        from vllm_cpu_sim.kernels import OVERRIDES

        register_kernels(OVERRIDES)

    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        from vllm.config import CompilationMode, CUDAGraphMode

        # Refuse what cannot run here in the front process, where the error
        # reaches the user directly instead of through a dead engine core.
        sim = SimConfig.load(vllm_config.additional_config)
        if vllm_config.model_config is not None:
            cls.check_if_supports_dtype(vllm_config.model_config.dtype)
        parallel_config = vllm_config.parallel_config
        if parallel_config.worker_cls == "auto":
            parallel_config.worker_cls = "vllm_cpu_sim.worker.CpuSimWorker"
        parallel_config.disable_custom_all_reduce = True
        if parallel_config.enable_dbo:
            logger.warning("cpu_sim: dual-batch overlap needs device streams; disabled")
            parallel_config.enable_dbo = False

        cache_config = vllm_config.cache_config
        if not cache_config.user_specified_block_size:
            cache_config.block_size = DEFAULT_BLOCK_SIZE

        # The step is short and host-bound; overlapping scheduling with a
        # device that is the same CPU gains nothing.
        vllm_config.scheduler_config.async_scheduling = False

        compilation_config = vllm_config.compilation_config
        compilation_config.cudagraph_capture_sizes = []
        compilation_config.cudagraph_mode = CUDAGraphMode.NONE
        if vllm_config.lora_config is not None and compilation_config.mode != CompilationMode.NONE:
            # LoRA's wrappers swap adapters between steps; as on vLLM's CPU
            # platform, its models run eagerly.
            logger.info("cpu_sim: LoRA enabled; the model runs eagerly")
            compilation_config.mode = CompilationMode.NONE
            # vLLM chose "none" (the native forms, for Inductor to fuse);
            # running eagerly, the custom ops are the fast path. Per-op
            # "+name"/"-name" choices are kept.
            compilation_config.custom_ops = [
                "all" if op == "none" else op for op in compilation_config.custom_ops
            ]
        if compilation_config.mode == CompilationMode.STOCK_TORCH_COMPILE:
            # vLLM's CPU model runner does not apply this mode; the nearest one
            # it does is a single Dynamo trace compiled by Inductor.
            compilation_config.mode = CompilationMode.DYNAMO_TRACE_ONCE
        if compilation_config.mode == CompilationMode.VLLM_COMPILE:
            # The piecewise backend looks every token count up among the
            # compile sizes, which vLLM completes only on platforms with
            # static graphs.
            compilation_config.post_init_cudagraph_sizes()
        if compilation_config.mode in (CompilationMode.VLLM_COMPILE,
                                       CompilationMode.DYNAMO_TRACE_ONCE):
            logger.info("cpu_sim: the model is compiled by Inductor at start "
                        "(--enforce-eager skips it)")
            # vLLM chose to wrap its IR ops (RMSNorm) as opaque torch ops for
            # fusion passes that need its `_C` kernels; traced through
            # instead, Inductor fuses them with their neighbours.
            compilation_config.ir_enable_torch_wrap = False
            compilation_config.inductor_compile_config.update({
                # no checks on every call of the compiled graph
                "size_asserts": False,
                "nan_asserts": False,
                # the generated kernels take torch's thread count when they
                # run, not when compiled: the worker sets it, and vLLM
                # changes it around loading
                "cpp.dynamic_threads": True,
                # bfloat16 intermediates rounded where the eager model rounds
                # them: without it, Inductor keeps fused chains in float32 and
                # the default model's bfloat16 chat answers drift (e.g. "What
                # is the capital of France?" gets "L'Étoile, la Marseillaise")
                "emulate_precision_casts": True,
            })
            # vLLM's AOT cache of the compiled model fails here: VLLM_COMPILE's
            # artifact would hold the packed (oneDNN) weights, which cannot be
            # serialized, and its loader cannot read DYNAMO_TRACE_ONCE's, so
            # every start would try, fail and compile again. Without it,
            # vLLM's per-graph cache (VLLM_COMPILE) or Inductor's own cache
            # serves the next start.
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")

        # Worker and engine processes are spawned, not forked: a process whose
        # OpenMP pool has run (any torch op on more than one thread) deadlocks
        # in a forked child. An explicit choice by the user is kept.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        logger.info(
            "cpu_sim: simulated device memory %.2f GiB, block size %d",
            sim.device_memory / (1 << 30), cache_config.block_size,
        )
