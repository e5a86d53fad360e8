"""The cpu_sim platform: vLLM's V1 engine on the CPU through the out-of-tree path.

The kit's :class:`~vllm_plugin_kit.platform.HostPlatform` answers what every
host stand-in answers alike (the ``OOT`` enum, the host as the device, gloo,
the settings known to vLLM's environment check); this class names cpu_sim's
parts and compiles the model as vLLM's own platforms do.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vllm_plugin_kit import get_logger
from vllm_plugin_kit.platform import HostPlatform

from vllm_cpu_sim import __version__
from vllm_cpu_sim.envs import SETTINGS, SimConfig

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = get_logger(__name__)


class CpuSimPlatform(HostPlatform):
    plugin = "cpu_sim"
    distribution = "vllm-cpu-sim"
    version = __version__
    settings = SETTINGS
    device_control_env_var: str = "VLLM_CPU_SIM_VISIBLE_DEVICES"
    worker_cls = "vllm_cpu_sim.worker.CpuSimWorker"
    attention_backend = "vllm_cpu_sim.attention.CpuSimAttentionBackend"
    # vLLM's CPU wrapper (pure PyTorch), right for requests without an adapter
    punica_wrapper = "vllm_cpu_sim.lora.CpuSimPunicaWrapper"
    # drafts from the prompt's n-grams (numba, a dependency); EAGLE and draft
    # models launch Triton kernels of their own that have no PyTorch form here
    speculative_methods = ("ngram",)
    #: small enough that prefix-cache hits and preemption show on short
    #: prompts, large enough to keep block tables short
    default_block_size = 16

    @classmethod
    def get_pass_manager_cls(cls) -> str:
        return "vllm_cpu_sim.passes.CpuSimPassManager"

    @classmethod
    def supports_structured_output(cls) -> bool:
        return True


    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        from vllm.config import CompilationMode, CUDAGraphMode

        sim = SimConfig.load(vllm_config.additional_config)
        cls.configure_host(vllm_config)
        cache_config = vllm_config.cache_config

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

        logger.info(
            "cpu_sim: simulated device memory %.2f GiB, block size %d",
            sim.device_memory / (1 << 30), cache_config.block_size,
        )
