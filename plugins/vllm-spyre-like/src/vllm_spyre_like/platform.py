"""The platform: what vLLM asks of a backend, answered for a CPU stand-in.

vLLM reads the class attributes and classmethods below to pick the worker,
attention backend, communicator, dtypes and compilation mode. The values
here run everything on the CPU; for real hardware, change the device names,
memory queries and distributed backend to your device's, method by method.

The enum is ``OOT`` rather than ``CPU`` on purpose: vLLM gives ``CPU``
platforms code paths that call compiled ``torch.ops._C`` kernels, which the
pure-Python ("empty") build of vLLM does not ship. As ``OOT`` every layer
runs its PyTorch form.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from vllm.platforms.interface import Platform, PlatformEnum

from vllm_spyre_like import PLUGIN, get_logger
from vllm_spyre_like.envs import (
    ENV_VARS,
    WarmupShape,
    batch_wait_ms,
    batching_mode,
    check_shapes,
    compile_backend,
    describe,
    device_memory,
    fitting,
    unfittable_message,
    warmup_shapes,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.inputs.engine import EngineInput
    from vllm.pooling_params import PoolingParams
    from vllm.sampling_params import SamplingParams
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig

logger = get_logger(__name__)

#: The block size of the device's paged attention: the default in both modes,
#: the only one continuous batching takes. (Decode steps also run faster here
#: with it than with vLLM's default of 16: a quarter of the block-table columns
#: to gather through.)
BLOCK_SIZE = 64
#: Largest decode batch continuous batching compiles graphs for.
MAX_CONTINUOUS_BATCH = 32
DTYPES = (torch.float32, torch.bfloat16)
WORKER = "vllm_spyre_like.worker.SpyreLikeWorker"
STATIC_SCHEDULER = "vllm_spyre_like.scheduler.StaticBatchingScheduler"
CONTINUOUS_SCHEDULER = "vllm_spyre_like.scheduler.ContinuousBatchingScheduler"


def _client_error():
    """A ValueError that vLLM's server also knows as a client error (HTTP 400)."""
    from vllm.exceptions import VLLMValidationError

    class UnfittableRequestError(VLLMValidationError, ValueError):
        """A request that fits no warmup shape."""

    return UnfittableRequestError


class SpyreLikePlatform(Platform):
    _enum = PlatformEnum.OOT
    # vLLM builds torch devices from these names. Your device: its torch
    # device type (e.g. "npu") and dispatch key (e.g. "PrivateUse1").
    device_name: str = "cpu"
    device_type: str = "cpu"
    dispatch_key: str = "CPU"
    # torch.distributed backend between workers; your device's (e.g. "hccl").
    dist_backend: str = "gloo"
    device_control_env_var: str = "VLLM_SPYRE_LIKE_VISIBLE_DEVICES"
    simple_compile_backend: str = "inductor"
    supported_quantization: list[str] = []  # noqa: RUF012 (vLLM declares it so)
    # known to vLLM's environment check, and passed on to Ray workers
    additional_env_vars: list[str] = ENV_VARS
    #: set by check_and_update_config in every process that builds a config
    #: (the front end's too, where validate_request runs)
    warmup_shapes: list[WarmupShape] = []  # noqa: RUF012
    max_model_len: int | None = None

    @property
    def supported_dtypes(self) -> list[torch.dtype]:
        return list(DTYPES)

    @classmethod
    def check_if_supports_dtype(cls, dtype: torch.dtype) -> None:
        if dtype not in DTYPES:
            raise ValueError(
                f"{PLUGIN} does not support dtype={str(dtype).removeprefix('torch.')}; "
                "use --dtype float32 or --dtype bfloat16"
            )

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return PLUGIN

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        # Your device: ask its runtime for the capacity of device_id.
        return device_memory()

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        # Your device: make `device` current for this process (e.g. torch.npu.set_device).
        pass

    @classmethod
    def manual_seed_all(cls, seed: int) -> None:
        # torch.manual_seed already seeds the CPU generator. Your device: seed
        # its generators too (e.g. torch.npu.manual_seed_all).
        pass

    @classmethod
    def inference_mode(cls):
        # The KV cache and persistent batch buffers are updated in place, which
        # inference tensors forbid outside inference mode; no_grad is enough.
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
        if attn_selector_config.use_mla or attn_selector_config.use_sparse:
            raise NotImplementedError(f"{PLUGIN} has no MLA or sparse attention backend")
        return "vllm_spyre_like.attention.SpyreLikeAttentionBackend"

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        return "vllm_spyre_like.communicator.SpyreLikeCommunicator"

    @classmethod
    def opaque_attention_op(cls) -> bool:
        # Keep attention one opaque op so graph capture never traces into it.
        return True

    @classmethod
    def support_hybrid_kv_cache(cls) -> bool:
        return False

    @classmethod
    def import_kernels(cls) -> None:
        # vLLM's default imports vllm._C, which the empty build lacks.
        # Your device: import its compiled kernels (custom ops) here.
        pass

    @classmethod
    def register_triton_kernel_overrides(cls) -> None:
        # No Triton on this platform: give vLLM PyTorch forms of the kernels
        # its model runner launches (see kernels.py).
        from vllm.triton_utils.dispatcher import register_kernels

        from vllm_spyre_like.kernels import OVERRIDES

        register_kernels(OVERRIDES)

    @classmethod
    def log_warnings(cls) -> None:
        # vLLM resolves the platform before it configures logging, so its own
        # activation line is usually lost; vLLM calls this once logging is up.
        from vllm_spyre_like import DISTRIBUTION, __version__

        logger.info("Platform plugin %s is activated (%s %s)", PLUGIN, DISTRIBUTION, __version__)

    @classmethod
    def validate_environ(cls, hard_fail: bool) -> None:
        # vLLM flags every VLLM_* variable it does not know; this plugin's are known.
        from vllm import envs

        for env in os.environ:
            if (env.startswith("VLLM_") and env not in envs.environment_variables
                    and env not in cls.additional_env_vars):
                if hard_fail:
                    raise ValueError(f"Unknown vLLM environment variable detected: {env}")
                logger.warning("Unknown vLLM environment variable detected: %s", env)

    @classmethod
    def validate_request(
        cls,
        processed_inputs: EngineInput,
        params: SamplingParams | PoolingParams,
    ) -> None:
        """Refuse up front a request no warmup shape fits (vLLM calls this in the
        input processor, before the request reaches the engine core)."""
        from vllm.sampling_params import SamplingParams

        if not isinstance(params, SamplingParams) or not cls.warmup_shapes:
            return
        inputs = processed_inputs
        if inputs.get("type") == "enc_dec":
            inputs = inputs["decoder_prompt"]  # type: ignore[assignment]
        if "prompt_token_ids" in inputs and inputs["prompt_token_ids"] is not None:
            prompt_tokens = len(inputs["prompt_token_ids"])
        elif "prompt_embeds" in inputs:
            prompt_tokens = len(inputs["prompt_embeds"])  # type: ignore[typeddict-item]
        else:
            return
        if cls.max_model_len is not None and prompt_tokens > cls.max_model_len:
            return  # vLLM's own check refuses it next, naming max_model_len
        max_tokens = params.max_tokens
        if max_tokens is None:  # vLLM fills the rest of the context in
            max_tokens = (cls.max_model_len or prompt_tokens) - prompt_tokens
        if not fitting(cls.warmup_shapes, prompt_tokens, max_tokens):
            prompt_fits = any(prompt_tokens <= s.prompt_len for s in cls.warmup_shapes)
            raise _client_error()(
                unfittable_message(cls.warmup_shapes, prompt_tokens, max_tokens),
                parameter="max_tokens" if prompt_fits else "prompt",
                value=max_tokens if prompt_fits else prompt_tokens,
            )

    @classmethod
    def _configure_static(cls, vllm_config: VllmConfig) -> None:
        """The warmup shapes, and the scheduler that batches by them."""
        shapes = warmup_shapes(vllm_config.additional_config)
        batch_wait_ms(vllm_config.additional_config)  # a bad value fails here, up front
        scheduler_config = vllm_config.scheduler_config
        if vllm_config.model_config is not None:
            cls.max_model_len = vllm_config.model_config.max_model_len
            check_shapes(shapes, cls.max_model_len)
        largest_batch = max(s.batch_size for s in shapes)
        if scheduler_config.max_num_seqs < largest_batch:
            raise ValueError(
                f"max_num_seqs={scheduler_config.max_num_seqs} is smaller than the largest "
                f"warmup batch size {largest_batch} ({describe(shapes)}); raise "
                "--max-num-seqs or lower the batch sizes"
            )
        scheduler_config.max_num_seqs = largest_batch
        cls._set_scheduler(vllm_config, STATIC_SCHEDULER)
        cls.warmup_shapes = shapes
        logger.info("%s: static batching, warmup shapes %s", PLUGIN, describe(shapes))

    @classmethod
    def _configure_continuous(cls, vllm_config: VllmConfig) -> None:
        """Block size 64, prompts prefilled whole, limits checked before any work."""
        cache_config = vllm_config.cache_config
        if cache_config.user_specified_block_size and \
                cache_config.block_size != BLOCK_SIZE:
            raise ValueError(
                f"{PLUGIN} continuous batching pages the KV cache in blocks of "
                f"{BLOCK_SIZE} tokens, not --block-size {cache_config.block_size}"
            )
        scheduler_config = vllm_config.scheduler_config
        if vllm_config.model_config is not None:
            max_len = vllm_config.model_config.max_model_len
            cls.max_model_len = max_len
            if max_len % BLOCK_SIZE:
                whole = max(BLOCK_SIZE, max_len - max_len % BLOCK_SIZE)
                raise ValueError(
                    f"{PLUGIN} continuous batching needs max_model_len to be a multiple of "
                    f"{BLOCK_SIZE} (prompts are padded to whole blocks), not "
                    f"{max_len}; use --max-model-len {whole}"
                )
            if scheduler_config.max_num_batched_tokens < max_len:
                raise ValueError(
                    f"{PLUGIN} continuous batching prefills each prompt in one step, so "
                    f"max_num_batched_tokens={scheduler_config.max_num_batched_tokens} must "
                    f"be at least max_model_len={max_len}"
                )
        if scheduler_config.max_num_seqs > MAX_CONTINUOUS_BATCH:
            logger.warning(
                "%s continuous batching compiles decode graphs for up to %d sequences; "
                "max_num_seqs=%d lowered to %d", PLUGIN, MAX_CONTINUOUS_BATCH,
                scheduler_config.max_num_seqs, MAX_CONTINUOUS_BATCH)
            scheduler_config.max_num_seqs = MAX_CONTINUOUS_BATCH
        cls._set_scheduler(vllm_config, CONTINUOUS_SCHEDULER)
        cls.warmup_shapes = []
        logger.info("%s: continuous batching, up to %d sequences of %s tokens", PLUGIN,
                    scheduler_config.max_num_seqs, cls.max_model_len)

    @classmethod
    def update_block_size_for_backend(cls, vllm_config: VllmConfig) -> None:
        # vLLM's default picks the attention backend's preferred size (16); the
        # device pages in blocks of 64. An explicit --block-size is kept (static
        # batching takes any, continuous batching refuses any but 64).
        cache_config = vllm_config.cache_config
        if not cache_config.user_specified_block_size:
            cache_config.block_size = BLOCK_SIZE

    @staticmethod
    def _set_scheduler(vllm_config: VllmConfig, scheduler: str) -> None:
        scheduler_config = vllm_config.scheduler_config
        if scheduler_config.scheduler_cls in (None, "vllm.v1.core.sched.scheduler.Scheduler"):
            scheduler_config.scheduler_cls = scheduler

    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        from vllm.config import CompilationMode, CUDAGraphMode

        additional = vllm_config.additional_config
        compile_backend(additional)  # a bad choice fails here, in the user's process
        if batching_mode(additional) == "continuous":
            cls._configure_continuous(vllm_config)
        else:
            cls._configure_static(vllm_config)

        # Refuse what cannot run here in the front process, where the error
        # reaches the user directly instead of through a dead engine core.
        if vllm_config.model_config is not None:
            cls.check_if_supports_dtype(vllm_config.model_config.dtype)
        parallel_config = vllm_config.parallel_config
        if parallel_config.worker_cls == "auto":
            parallel_config.worker_cls = WORKER
        parallel_config.disable_custom_all_reduce = True
        parallel_config.enable_dbo = False  # needs device streams

        cls.update_block_size_for_backend(vllm_config)

        # Overlapping scheduling with a "device" that is the same CPU gains nothing.
        vllm_config.scheduler_config.async_scheduling = False

        # vLLM's own compilation stays off: the model runner compiles one graph
        # per shape itself (graphs.py), which vLLM's dynamic-shape modes do not.
        compilation_config = vllm_config.compilation_config
        compilation_config.cudagraph_capture_sizes = []
        compilation_config.cudagraph_mode = CUDAGraphMode.NONE
        compilation_config.mode = CompilationMode.NONE

        # Workers are spawned, not forked: a process whose OpenMP pool has run
        # deadlocks in a forked child. An explicit choice by the user is kept.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
