"""The Ascend NPU platform, and the same platform emulated on the CPU.

:class:`NPUPlatform` is what runs on Atlas A2/A3 NPUs: device ``npu``,
dispatch key ``PrivateUse1``, HCCL. :class:`EmulatedNPUPlatform` is the same
platform with the device mapped to the host: every NPU op goes to its
reference implementation (``npu_ops``), tensors live in host memory of a
fixed emulated capacity, and workers talk over gloo. Both keep the NPU's
choices: block size 128, NPU custom ops on, GPU-only options reset.

The ``OOT`` enum is deliberate: vLLM gives ``CPU`` platforms code paths that
call compiled ``torch.ops._C`` kernels, which the pure-Python vLLM build lacks.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from vllm.platforms.interface import Platform, PlatformEnum
from vllm_plugin_kit.platform import HostDeviceMixin, PluginPlatformMixin

from vllm_ascend import PLUGIN, __version__, get_logger
from vllm_ascend.envs import SETTINGS, AscendConfig

if TYPE_CHECKING:
    from vllm.config import ModelConfig, VllmConfig

logger = get_logger(__name__)

#: The fused attention kernels read a paged cache in blocks of 128 to 512
#: tokens, multiples of 128; 128 is the size they are tuned for.
BLOCK_SIZE = 128
MAX_BLOCK_SIZE = 512
#: the largest decode batch an emulated NPU captures an ACL graph of; larger
#: decode steps run eagerly
EMULATED_MAX_GRAPH_BATCH = 8


def check_block_size(block_size: int) -> None:
    if block_size % BLOCK_SIZE or not BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(
            f"--block-size {block_size}: the NPU's fused attention reads the paged KV cache in "
            f"blocks of {BLOCK_SIZE} to {MAX_BLOCK_SIZE} tokens, multiples of {BLOCK_SIZE}")


class NPUPlatform(PluginPlatformMixin, Platform):
    _enum = PlatformEnum.OOT
    plugin = PLUGIN
    distribution = "vllm-ascend"
    version = __version__
    settings = SETTINGS
    attention_backend = "vllm_ascend.attention.AscendAttentionBackend"
    communicator_cls = "vllm_ascend.communicator.NPUCommunicator"
    default_block_size = BLOCK_SIZE
    device_name: str = "npu"
    device_type: str = "npu"
    dispatch_key: str = "PrivateUse1"
    dist_backend: str = "hccl"
    ray_device_key: str = "NPU"
    device_control_env_var: str = "ASCEND_RT_VISIBLE_DEVICES"
    simple_compile_backend: str = "eager"
    #: W8A8 in ModelSlim's format (:mod:`vllm_ascend.quantization`)
    supported_quantization: ClassVar[list[str]] = ["ascend"]
    #: the dtypes of the NPU's attention and norm kernels
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.bfloat16, torch.float16)
    emulated: ClassVar[bool] = False

    @classmethod
    def activation_detail(cls) -> str:
        return "emulated on the CPU" if cls.emulated else "on NPU"

    @classmethod
    def check_if_supports_dtype(cls, dtype: torch.dtype) -> None:
        if dtype not in cls.dtypes:
            names = " or ".join(f"--dtype {str(d).removeprefix('torch.')}"
                                for d in cls.dtypes)
            where = "emulated on the CPU" if cls.emulated else "on the NPU"
            raise ValueError(f"vllm-ascend {where} does not run "
                             f"dtype={str(dtype).removeprefix('torch.')}; use {names}")

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return torch.npu.get_device_name(device_id)

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        return torch.npu.get_device_properties(device_id).total_memory

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        torch.npu.set_device(device)

    @classmethod
    def manual_seed_all(cls, seed: int) -> None:
        torch.npu.manual_seed_all(seed)

    @classmethod
    def inference_mode(cls):
        return torch.inference_mode()

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        return True

    @classmethod
    def get_current_memory_usage(cls, device: torch.types.Device | None = None) -> float:
        torch.npu.reset_peak_memory_stats(device)
        return float(torch.npu.max_memory_allocated(device))

    @classmethod
    def get_static_graph_wrapper_cls(cls) -> str:
        return "vllm_ascend.acl_graph.ACLGraphWrapper"

    @classmethod
    def graph_pool_handle(cls) -> Any:
        from vllm_ascend import npu_graphs

        return npu_graphs.graph_pool_handle()

    @classmethod
    def supports_structured_output(cls) -> bool:
        return True

    # --- where the emulated device differs: the worker calls these ------------------

    @classmethod
    def worker_device(cls, local_rank: int) -> torch.device:
        """The device of the worker of ``local_rank`` (the rank on this host)."""
        return torch.device(f"npu:{local_rank}")

    @classmethod
    def memory_accounting(cls, worker: Any) -> AbstractContextManager:
        """Entered around each start-up phase of ``worker``; on an NPU torch_npu's
        allocator counts every allocation anyway."""
        return nullcontext()

    @classmethod
    def on_model_loaded(cls, worker: Any) -> None:
        """After the worker has loaded the model, before it is profiled."""

    @classmethod
    def _reset_gpu_only_options(cls, vllm_config: VllmConfig) -> None:
        """Options that need CUDA kernels, turned off with one warning each."""
        parallel = vllm_config.parallel_config
        parallel.disable_custom_all_reduce = True
        if parallel.enable_dbo:
            logger.warning("vllm-ascend: dual-batch overlap is a CUDA feature; disabled")
            parallel.enable_dbo = False
        model = vllm_config.model_config
        if model is not None and not model.disable_cascade_attn:
            model.disable_cascade_attn = True
        attention = getattr(vllm_config, "attention_config", None)
        if attention is not None and getattr(attention, "backend", None) is not None:
            logger.warning("vllm-ascend: attention backend %s is for GPUs; using ASCEND_ATTN",
                           attention.backend)
            attention.backend = None

    @classmethod
    def _check_modelslim_checkpoint(cls, model_config: ModelConfig) -> None:
        """A ModelSlim checkpoint loaded without its method would put int8
        weights into floating-point layers; refuse it with the flag to pass."""
        from vllm_ascend.quantization import DESCRIPTION_FILE, NAME

        described = os.path.isfile(os.path.join(str(model_config.model), DESCRIPTION_FILE))
        if described and model_config.quantization != NAME:
            raise ValueError(
                f"{model_config.model} is a ModelSlim quantized checkpoint ({DESCRIPTION_FILE}); "
                f"load it with --quantization {NAME}")

    @classmethod
    def support_static_graph_mode(cls) -> bool:
        return True

    @classmethod
    def _set_graph_mode(cls, vllm_config: VllmConfig) -> None:
        """ACL graphs of whole decode steps, unless graphs are off (--enforce-eager).

        Only decode steps: the attention kernel is updated before each replay
        in its decode form alone (vllm_ascend.acl_graph), and without
        torch.compile there are no pieces to capture around it.
        """
        from vllm.config import CUDAGraphMode

        compilation = vllm_config.compilation_config
        mode, sizes = compilation.cudagraph_mode, list(compilation.cudagraph_capture_sizes)
        if cls.emulated and sizes and sizes[-1] > EMULATED_MAX_GRAPH_BATCH:
            # each size is captured by a forward pass recorded op by op on the host
            sizes = [size for size in sizes if size <= EMULATED_MAX_GRAPH_BATCH]
        if mode == CUDAGraphMode.NONE or not sizes:
            compilation.cudagraph_mode = CUDAGraphMode.NONE
            compilation.cudagraph_capture_sizes = []
            compilation.max_cudagraph_capture_size = 0
            logger.info("vllm-ascend runs every step eagerly (no ACL graphs)")
            return
        if mode != CUDAGraphMode.FULL_DECODE_ONLY:
            logger.info("vllm-ascend captures ACL graphs of decode steps only: cudagraph_mode "
                        "%s -> FULL_DECODE_ONLY", mode.name)
            compilation.cudagraph_mode = CUDAGraphMode.FULL_DECODE_ONLY
        if cls.emulated:
            # vLLM runs each size once before capturing it, to warm a device's
            # kernels; the host has none to warm
            compilation.cudagraph_num_of_warmups = 0
        if sizes != compilation.cudagraph_capture_sizes:
            compilation.cudagraph_capture_sizes = sizes
            compilation.max_cudagraph_capture_size = sizes[-1]
            compilation.post_init_cudagraph_sizes()
        logger.info("vllm-ascend: ACL graphs of decode steps of %s requests", sizes)

    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        from vllm.config import CompilationMode

        # Refuse what cannot run in the front process, where the error reaches
        # the user directly instead of through a dead engine core.
        config = AscendConfig.load(vllm_config.additional_config)
        if vllm_config.model_config is not None:
            cls.check_if_supports_dtype(vllm_config.model_config.dtype)
            cls._check_modelslim_checkpoint(vllm_config.model_config)
        if vllm_config.lora_config is not None:
            # the NPU's LoRA products need their own kernels (bgmv/sgmv on the
            # NPU), which this plugin does not provide yet
            raise ValueError(
                "vllm-ascend does not run LoRA adapters (--enable-lora): it has no NPU "
                "kernels for the batched adapter products; serve a merged checkpoint instead")
        model_config = vllm_config.model_config
        if model_config is not None and model_config.attn_type == "encoder_only":
            raise ValueError(
                "vllm-ascend does not run encoder-only models (BERT-style embedding "
                "models): its attention kernels run causal decoder layers")
        if model_config is not None and model_config.get_sliding_window() is not None:
            # the fused attention kernels take a window (pre_tokens), which the
            # attention backend does not pass yet
            raise ValueError(
                "vllm-ascend does not run sliding-window attention yet (this model's layers "
                f"see {model_config.get_sliding_window()} positions): its attention backend "
                "passes no window to the fused attention kernels")
        if vllm_config.speculative_config is not None:
            # the rejection sampler scores drafts with Triton kernels, which
            # need an NPU form (PyTorch or triton-ascend) this plugin lacks
            raise ValueError(
                "vllm-ascend does not run speculative decoding (--speculative-config): it "
                "has no NPU kernels for the rejection sampler that scores the drafts")
        parallel = vllm_config.parallel_config
        if parallel.use_all2all and parallel.all2all_backend != "allgather_reducescatter":
            # MoE tokens travel between data-parallel ranks through the
            # communicator's all-gather and reduce-scatter; the other backends
            # are CUDA libraries.
            raise ValueError(
                "vllm-ascend sends MoE tokens between data-parallel ranks by all-gather and "
                "reduce-scatter (--all2all-backend allgather_reducescatter); "
                f"{parallel.all2all_backend!r} is not available on Ascend NPUs")
        if parallel.worker_cls == "auto":
            parallel.worker_cls = "vllm_ascend.worker.NPUWorker"
        cls._reset_gpu_only_options(vllm_config)

        cache_config = vllm_config.cache_config
        cls.update_block_size_for_backend(vllm_config)
        check_block_size(cache_config.block_size)
        if vllm_config.scheduler_config.async_scheduling:
            logger.warning("vllm-ascend: asynchronous scheduling is off (the NPU model "
                           "runner schedules each step after the last one's output)")
        vllm_config.scheduler_config.async_scheduling = False

        compilation = vllm_config.compilation_config
        if compilation.mode != CompilationMode.NONE:
            logger.info("vllm-ascend runs the model without torch.compile (compilation mode "
                        "NONE)")
            compilation.mode = CompilationMode.NONE
        cls._set_graph_mode(vllm_config)
        # The NPU layers are the fast path: custom ops on unless the user
        # turned one off ("-name" entries are kept).
        compilation.custom_ops = ["all" if op == "none" else op
                                  for op in compilation.custom_ops]
        # Spawned, not forked: a forked child of a process whose OpenMP pool
        # has run deadlocks (and NPU runtimes do not survive fork either).
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        logger.info("vllm-ascend: block size %d%s", cache_config.block_size,
                    f", emulated device memory {config.device_memory / (1 << 30):.2f} GiB"
                    if cls.emulated else "")


class EmulatedNPUPlatform(HostDeviceMixin, NPUPlatform):
    """The NPU platform with its tensors on the host (the kit's
    :class:`~vllm_plugin_kit.platform.HostDeviceMixin`), its device runtime
    emulated (:mod:`vllm_ascend.emulated.runtime`: ``torch.npu``, the memory
    statistics) and its ops run by their references. The worker and model runner
    are the NPU's."""

    device_control_env_var: str = "VLLM_ASCEND_EMULATED_VISIBLE_DEVICES"
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.bfloat16, torch.float32)
    emulated: ClassVar[bool] = True

    # the device calls go to torch.npu, as on an NPU: here the emulated runtime's
    get_device_name = NPUPlatform.__dict__["get_device_name"]
    get_device_total_memory = NPUPlatform.__dict__["get_device_total_memory"]
    get_current_memory_usage = NPUPlatform.__dict__["get_current_memory_usage"]
    set_device = NPUPlatform.__dict__["set_device"]
    manual_seed_all = NPUPlatform.__dict__["manual_seed_all"]
    inference_mode = NPUPlatform.__dict__["inference_mode"]

    @classmethod
    def worker_device(cls, local_rank: int) -> torch.device:
        return torch.device("cpu")

    @classmethod
    def memory_accounting(cls, worker: Any) -> AbstractContextManager:
        from vllm_ascend.emulated import runtime

        return runtime.accounting(runtime.device_of(worker))

    @classmethod
    def on_model_loaded(cls, worker: Any) -> None:
        from vllm_plugin_kit import linear
        from vllm_plugin_kit.settings import thread_count

        # vLLM drops torch to one thread once the model is loaded (no host op of
        # an accelerator's step gains from more); here the model runs on the host
        config = AscendConfig.load(worker.vllm_config.additional_config)
        parallel = worker.parallel_config
        torch.set_num_threads(thread_count(config.num_threads, parallel.tensor_parallel_size,
                                           parallel.pipeline_parallel_size))
        from vllm_ascend import npu_ops

        # each widened product is the NPU's one matrix product (launch counts)
        widened = linear.widen_bf16_products(worker.model_runner.get_model(),
                                             around=lambda: npu_ops.stand_in("linear"))
        if widened:
            logger.info("vllm-ascend: no native bfloat16 GEMM on this host; %d bfloat16 "
                        "linear layers multiply %d rows or more in float32 (the NPU's "
                        "accumulation, rounded back)", widened, linear.MIN_ROWS)
