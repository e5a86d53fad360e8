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

from typing import TYPE_CHECKING, ClassVar

import torch
from vllm_plugin_kit.platform import HostPlatform

from vllm_spyre_like import DISTRIBUTION, PLUGIN, __version__, get_logger
from vllm_spyre_like.envs import (
    SETTINGS,
    SpyreLikeConfig,
    WarmupShape,
    check_shapes,
    describe,
    fitting,
    unfittable_message,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.inputs.engine import EngineInput
    from vllm.pooling_params import PoolingParams
    from vllm.sampling_params import SamplingParams

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
        """A request the device cannot run: it fits no warmup shape, or asks for
        an operation the device lacks."""

    return UnfittableRequestError


class SpyreLikePlatform(HostPlatform):
    """The kit's host platform (:class:`vllm_plugin_kit.platform.HostPlatform`)
    with this device's schedulers, block size and per-shape graphs. Your
    device: its torch device type (e.g. "npu"), dispatch key (e.g.
    "PrivateUse1"), distributed backend (e.g. "hccl"), memory queries and
    seeding, in place of the kit's ``HostDeviceMixin``."""

    plugin = PLUGIN
    distribution = DISTRIBUTION
    version = __version__
    settings = SETTINGS
    dtypes = DTYPES
    device_control_env_var: str = "VLLM_SPYRE_LIKE_VISIBLE_DEVICES"
    worker_cls = WORKER
    attention_backend = "vllm_spyre_like.attention.SpyreLikeAttentionBackend"
    default_block_size = BLOCK_SIZE
    #: set by check_and_update_config in every process that builds a config
    #: (the front end's too, where validate_request runs)
    warmup_shapes: ClassVar[list[WarmupShape]] = []
    max_model_len: ClassVar[int | None] = None

    @classmethod
    def validate_request(
        cls,
        processed_inputs: EngineInput,
        params: SamplingParams | PoolingParams,
    ) -> None:
        """Refuse up front a request no warmup shape fits (vLLM calls this in the
        input processor, before the request reaches the engine core)."""
        from vllm.sampling_params import SamplingParams

        if not isinstance(params, SamplingParams):
            return
        if params.structured_outputs is not None:
            # the device's compiled graphs end at the logits; a per-step grammar
            # mask over them is not among the operations it runs
            raise _client_error()(
                f"{DISTRIBUTION} does not run structured outputs (response_format, "
                "structured_outputs): its compiled graphs have no per-step grammar mask",
                parameter="structured_outputs",
                value=None)
        if not cls.warmup_shapes:
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
    def _configure_static(cls, vllm_config: VllmConfig, config: SpyreLikeConfig) -> None:
        """The warmup shapes, and the scheduler that batches by them."""
        shapes = list(config.warmup_shapes)
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

    @staticmethod
    def _set_scheduler(vllm_config: VllmConfig, scheduler: str) -> None:
        scheduler_config = vllm_config.scheduler_config
        if scheduler_config.scheduler_cls in (None, "vllm.v1.core.sched.scheduler.Scheduler"):
            scheduler_config.scheduler_cls = scheduler

    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        from vllm.config import CompilationMode, CUDAGraphMode

        # Every setting is resolved here, once, and handed to the scheduler,
        # workers and model runners inside the configuration.
        config = SpyreLikeConfig.load(vllm_config.additional_config)
        if vllm_config.lora_config is not None:
            raise ValueError(
                f"{DISTRIBUTION} does not run LoRA adapters (--enable-lora): its graphs are "
                "compiled for the base model's weights; serve a merged checkpoint instead")
        model_config = vllm_config.model_config
        if model_config is not None and model_config.runner_type == "pooling":
            raise ValueError(
                f"{DISTRIBUTION} does not run pooling models (--runner pooling, "
                "/v1/embeddings): its schedulers and graphs are built for generation")
        if model_config is not None and model_config.is_moe:
            raise ValueError(
                f"{DISTRIBUTION} does not run mixture-of-experts models: their routing "
                "decides each expert's share of the batch at run time, and its graphs are "
                "compiled for static shapes")
        if vllm_config.speculative_config is not None:
            raise ValueError(
                f"{DISTRIBUTION} does not run speculative decoding (--speculative-config): "
                "its decode graphs take one token per sequence a step, not a draft to score")
        if isinstance(vllm_config.additional_config, dict):
            vllm_config.additional_config[PLUGIN] = config.section()
        if config.mode == "continuous":
            cls._configure_continuous(vllm_config)
        else:
            cls._configure_static(vllm_config, config)
        cls.configure_host(vllm_config)

        # vLLM's own compilation stays off: the model runner compiles one graph
        # per shape itself (graphs.py), which vLLM's dynamic-shape modes do not.
        compilation_config = vllm_config.compilation_config
        compilation_config.cudagraph_capture_sizes = []
        compilation_config.cudagraph_mode = CUDAGraphMode.NONE
        compilation_config.mode = CompilationMode.NONE
