"""Platform pieces a plugin shares: its identity and settings, and a device stood in on the host.

- :class:`PluginPlatformMixin`: what every platform of a plugin answers alike,
  on a real device or not: the activation line, vLLM's environment check
  knowing the plugin's settings, the dtype refusal, no ``vllm._C`` to import,
  the PyTorch forms of vLLM's Triton kernels.
- :class:`HostDeviceMixin`: the device is the host: torch device ``cpu``,
  gloo, memory of a capacity the settings give, no device seeds or streams.
- :class:`HostPlatform`: both on vLLM's ``Platform`` with the ``OOT`` enum,
  the base of a CPU stand-in (:meth:`HostPlatform.configure_host` holds the
  common part of ``check_and_update_config``). The enum is ``OOT`` rather than
  ``CPU`` on purpose: vLLM gives ``CPU`` platforms code paths that call
  compiled ``torch.ops._C`` kernels, which the pure-Python ("empty") build of
  vLLM does not ship; as ``OOT`` every layer runs its PyTorch form.

A real device's platform keeps :class:`PluginPlatformMixin` and answers the
device questions from its runtime (vllm-ascend's ``NPUPlatform`` is the worked
example; its emulated form puts :class:`HostDeviceMixin` in front of it).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

import psutil
import torch
from vllm.platforms.interface import Platform, PlatformEnum

from vllm_plugin_kit import get_logger, kernels
from vllm_plugin_kit.settings import SettingsTable, usable_cores

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig

logger = get_logger(__name__)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class PluginPlatformMixin:
    """Identity, settings and the vLLM hooks every platform of a plugin answers alike."""

    #: the entry point's name (what ``VLLM_PLUGINS`` lists and messages say)
    plugin: ClassVar[str]
    #: the distribution and version, for the activation line
    distribution: ClassVar[str]
    version: ClassVar[str]
    settings: ClassVar[SettingsTable]
    #: the model dtypes the platform runs; the first is vLLM's fallback for "auto"
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.bfloat16, torch.float32)
    additional_env_vars: ClassVar[list[str]]
    #: dotted paths vLLM builds the attention backend and communicator from
    attention_backend: ClassVar[str]
    communicator_cls: ClassVar[str]
    #: block size when the user gives none
    default_block_size: ClassVar[int] = 16

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "settings" in cls.__dict__:
            # known to vLLM's environment check, and passed on to Ray workers
            cls.additional_env_vars = cls.settings.env_vars()

    @property
    def supported_dtypes(self) -> list[torch.dtype]:
        return list(self.dtypes)

    @classmethod
    def check_if_supports_dtype(cls, dtype: torch.dtype) -> None:
        if dtype not in cls.dtypes:
            advice = " or ".join(f"--dtype {name}" for name in
                                 sorted(map(_dtype_name, cls.dtypes), reverse=True))
            raise ValueError(f"{cls.plugin} does not support dtype={_dtype_name(dtype)}; "
                             f"use {advice}")

    @classmethod
    def activation_detail(cls) -> str:
        """What the activation line adds after the version (e.g. where it runs)."""
        return ""

    @classmethod
    def log_warnings(cls) -> None:
        # vLLM resolves the platform before it configures logging, so its own
        # "Platform plugin ... is activated" line is usually lost; vLLM calls
        # this once logging is up.
        detail = cls.activation_detail()
        logger.info("Platform plugin %s is activated (%s %s%s)", cls.plugin, cls.distribution,
                    cls.version, f", {detail}" if detail else "")

    @classmethod
    def validate_environ(cls, hard_fail: bool) -> None:
        # vLLM flags every VLLM_* variable it does not know itself; the
        # plugin's own settings are known here.
        from vllm import envs

        for env in os.environ:
            if (env.startswith("VLLM_") and env not in envs.environment_variables
                    and env not in cls.additional_env_vars):
                if hard_fail:
                    raise ValueError(f"Unknown vLLM environment variable detected: {env}")
                logger.warning("Unknown vLLM environment variable detected: %s", env)

    @classmethod
    def import_kernels(cls) -> None:
        # vLLM's default imports vllm._C, which the empty build lacks, and
        # warns. A device imports its compiled kernels (custom ops) here.
        pass

    @classmethod
    def register_triton_kernel_overrides(cls) -> None:
        # vLLM's model runner writes a few bookkeeping kernels in Triton,
        # which these platforms do not run: PyTorch forms instead.
        kernels.register_overrides()

    @classmethod
    def get_attn_backend_cls(
        cls,
        selected_backend: AttentionBackendEnum | None,
        attn_selector_config: AttentionSelectorConfig,
        num_heads: int | None = None,
    ) -> str:
        if attn_selector_config.use_mla:
            raise NotImplementedError(f"{cls.plugin} has no MLA attention backend")
        if attn_selector_config.use_sparse:
            raise NotImplementedError(f"{cls.plugin} has no sparse attention backend")
        if selected_backend is not None:
            logger.info("%s ignores attention backend %s; using %s", cls.plugin,
                        selected_backend, cls.attention_backend.rsplit(".", 1)[-1])
        return cls.attention_backend

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        return cls.communicator_cls

    @classmethod
    def opaque_attention_op(cls) -> bool:
        # Keep attention one opaque op so graph capture never traces into it.
        return True

    @classmethod
    def support_hybrid_kv_cache(cls) -> bool:
        return False

    @classmethod
    def update_block_size_for_backend(cls, vllm_config: VllmConfig) -> None:
        # vLLM's default asks the attention backend, which takes any size; an
        # explicit --block-size is kept.
        cache_config = vllm_config.cache_config
        if not cache_config.user_specified_block_size:
            cache_config.block_size = cls.default_block_size


class HostDeviceMixin:
    """The device is the host: its memory a capacity from the settings
    (``device_memory``), one device per usable core, nothing to seed or bind."""

    settings: ClassVar[SettingsTable]
    plugin: ClassVar[str]
    device_name: str = "cpu"
    device_type: str = "cpu"
    dispatch_key: str = "CPU"
    dist_backend: str = "gloo"
    # vLLM's Ray executor places workers by the accelerator resources Ray knows,
    # which a custom resource is not: each stand-in device is one logical Ray
    # "GPU" (`ray start --num-gpus N`); no GPU is touched, Ray only counts it.
    ray_device_key: str = "GPU"

    @classmethod
    def device_count(cls) -> int:
        return usable_cores()

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return cls.plugin

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        # additional_config counts once a vLLM config is current, as in the worker
        from vllm.config import get_current_vllm_config_or_none

        config = get_current_vllm_config_or_none()
        return cls.settings.resolve(config.additional_config if config else None)[
            "device_memory"]

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
    def inference_mode(cls):
        # Inference tensors cannot be updated in place outside inference mode,
        # which the KV cache and persistent batch buffers are; no_grad is enough.
        return torch.no_grad()

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        return False

    @classmethod
    def num_compute_units(cls, device_id: int = 0) -> int:
        return torch.get_num_threads()


class HostPlatform(HostDeviceMixin, PluginPlatformMixin, Platform):
    """A CPU stand-in for a device; a plugin sets the class attributes below."""

    _enum = PlatformEnum.OOT
    simple_compile_backend: str = "inductor"
    supported_quantization: ClassVar[list[str]] = []
    #: dotted path of the worker vLLM builds
    worker_cls: ClassVar[str]
    communicator_cls: ClassVar[str] = "vllm_plugin_kit.communicator.GlooCommunicator"
    #: dotted path of the punica wrapper that runs LoRA adapters' products; none:
    #: ``--enable-lora`` is refused at start-up
    punica_wrapper: ClassVar[str | None] = None
    #: the speculative-decoding methods the platform runs (``--speculative-config
    #: '{"method": ...}'``); others are refused at start-up. The n-gram proposer
    #: runs on the host (numba) and the rejection sampler through the kit's
    #: PyTorch forms; the draft-model methods launch Triton kernels of their own
    speculative_methods: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def get_punica_wrapper(cls) -> str:
        if cls.punica_wrapper is None:
            raise NotImplementedError(f"{cls.distribution} does not run LoRA adapters")
        return cls.punica_wrapper

    @classmethod
    def configure_host(cls, vllm_config: VllmConfig) -> dict[str, Any]:
        """The part of ``check_and_update_config`` every host stand-in shares;
        returns the resolved settings.

        It refuses in the front process what cannot run (the error then reaches
        the user directly instead of through a dead engine core).
        """
        settings = cls.settings.resolve(vllm_config.additional_config)
        if vllm_config.model_config is not None:
            cls.check_if_supports_dtype(vllm_config.model_config.dtype)
        cache_dtype = vllm_config.cache_config.cache_dtype
        if cache_dtype != "auto":
            from vllm.utils.import_utils import resolve_obj_by_qualname

            backend = resolve_obj_by_qualname(cls.attention_backend)
            if not backend.supports_kv_cache_dtype(cache_dtype):
                raise ValueError(
                    f"{cls.distribution} does not store the KV cache as {cache_dtype!r} "
                    f"(--kv-cache-dtype); its attention takes "
                    f"{', '.join(map(repr, backend.supported_kv_cache_dtypes))}")
        if vllm_config.lora_config is not None and cls.punica_wrapper is None:
            raise ValueError(f"{cls.distribution} does not run LoRA adapters (--enable-lora): "
                             "it has no punica wrapper for their batched products")
        speculative = vllm_config.speculative_config
        if speculative is not None and speculative.method not in cls.speculative_methods:
            runs = (f": it runs method {', '.join(map(repr, cls.speculative_methods))} only"
                    if cls.speculative_methods else "")
            raise ValueError(f"{cls.distribution} does not run speculative decoding with "
                             f"method {speculative.method!r} (--speculative-config){runs}")
        parallel = vllm_config.parallel_config
        if parallel.worker_cls == "auto":
            parallel.worker_cls = cls.worker_cls
        parallel.disable_custom_all_reduce = True
        if parallel.enable_dbo:
            logger.warning("%s: dual-batch overlap needs device streams; disabled", cls.plugin)
            parallel.enable_dbo = False
        cls.update_block_size_for_backend(vllm_config)
        # The step is short and host-bound; overlapping scheduling with a
        # device that is the same CPU gains nothing.
        if vllm_config.scheduler_config.async_scheduling:
            logger.warning("%s: asynchronous scheduling is off (the device is this host's "
                           "CPU: nothing to overlap the scheduler with)", cls.plugin)
        vllm_config.scheduler_config.async_scheduling = False
        # Worker and engine processes are spawned, not forked: a process whose
        # OpenMP pool has run (any torch op on more than one thread) deadlocks
        # in a forked child. An explicit choice by the user is kept.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        return settings
