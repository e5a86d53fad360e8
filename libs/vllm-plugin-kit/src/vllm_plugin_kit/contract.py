"""vLLM's private names a plugin leans on, listed with the parameters it expects.

vLLM's plugin interface (``Platform``, ``WorkerBase``, ``AttentionBackend``,
``DeviceCommunicatorBase``, ``CustomOp.register_oot``, the Triton kernel
dispatcher) is public; everything else a plugin overrides, calls or patches is
not, and changes between releases without notice. Each such name is a
:class:`Coupling` in a list (the kit's in :data:`KIT`, each plugin's in its
``patches`` module); :func:`problems` checks them against the installed vLLM,
so an upgrade that renames or reshapes one fails a test naming it instead of
crashing an engine deep in a run. :func:`unlisted_overrides` finds private
methods a class overrides that no list names.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from types import FunctionType
from typing import Any

OVERRIDES, CALLS, PATCHES, READS = "overrides", "calls", "patches", "reads"
_METHODS = (FunctionType, classmethod, staticmethod, property)


@dataclass(frozen=True)
class Coupling:
    #: dotted path: module, then attributes (``vllm.v1.worker.gpu_worker.Worker.__init__``)
    symbol: str
    #: what the plugin does with it
    how: str
    #: why no public hook serves
    reason: str
    #: the parameter names the plugin expects, in order, without self/cls;
    #: None where only existence matters (a constant, a module attribute)
    params: tuple[str, ...] | None = None


def resolve(symbol: str) -> Any:
    """The object at ``symbol``: the longest importable module prefix, then attributes."""
    parts = symbol.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = inspect.getattr_static(obj, attr) if inspect.isclass(obj) else \
                getattr(obj, attr)
            if isinstance(obj, staticmethod | classmethod):
                obj = obj.__func__
        return obj
    raise ImportError(f"no module of {symbol} imports")


def parameters(obj: Any) -> tuple[str, ...]:
    """Parameter names of a function, method or Triton kernel, without self/cls."""
    names = getattr(obj, "arg_names", None)  # a Triton kernel or vLLM's override of one
    if names is None:
        fn = getattr(obj, "fn", None) or getattr(obj, "func", None) or obj
        if isinstance(fn, property):
            fn = fn.fget
        names = tuple(inspect.signature(fn).parameters)
    return tuple(n for n in names if n not in ("self", "cls"))


def problem(coupling: Coupling) -> str | None:
    """What no longer holds of ``coupling``, naming it; None when it holds."""
    try:
        obj = resolve(coupling.symbol)
    except (ImportError, AttributeError) as error:
        return (f"{coupling.symbol} ({coupling.how}: {coupling.reason}) no longer exists "
                f"in this vLLM: {error}")
    if coupling.params is None:
        return None
    try:
        found = parameters(obj)
    except (TypeError, ValueError) as error:
        return f"{coupling.symbol} ({coupling.how}) has no readable signature: {error}"
    if found != coupling.params:
        return (f"{coupling.symbol} ({coupling.how}: {coupling.reason}) takes "
                f"({', '.join(found)}), the plugin expects ({', '.join(coupling.params)})")
    return None


def problems(couplings: Iterable[Coupling]) -> list[str]:
    return [p for c in couplings if (p := problem(c)) is not None]


def unlisted_overrides(classes: Iterable[type], couplings: Iterable[Coupling]) -> list[str]:
    """Private vLLM methods the given classes (or their non-vLLM bases) override
    that no coupling lists, as ``vllm.…Base._name`` paths."""
    listed = {c.symbol for c in couplings}
    found = []
    for cls in classes:
        ours = [k for k in cls.__mro__ if not k.__module__.startswith("vllm.")]
        theirs = [k for k in cls.__mro__ if k.__module__.startswith("vllm.")]
        for klass in ours:
            for name, value in vars(klass).items():
                if not name.startswith("_") or name.startswith("__") or not isinstance(
                        value, _METHODS):
                    continue
                base = next((b for b in theirs if name in vars(b)), None)
                if base is None:
                    continue
                symbol = f"{base.__module__}.{base.__qualname__}.{name}"
                if symbol not in listed and symbol not in found:
                    found.append(symbol)
    return found


_WORKER = "vllm.v1.worker.gpu_worker.Worker"
_CPU_WORKER = "vllm.v1.worker.cpu_worker.CPUWorker"

#: What the kit itself leans on.
def _rejection_forms() -> dict[str, Any]:
    from vllm_plugin_kit import rejection

    return rejection.OVERRIDES


KIT = (
    Coupling(f"{_WORKER}.__init__", CALLS,
             "HostWorker skips CPUWorker.__init__ (it binds NUMA memory through a compiled "
             "kernel) and initialises as vLLM's GPU worker does",
             ("vllm_config", "local_rank", "rank", "distributed_init_method",
              "is_driver_worker")),
    Coupling(f"{_CPU_WORKER}.__init__", OVERRIDES, "HostWorker's constructor replaces it",
             ("vllm_config", "local_rank", "rank", "distributed_init_method",
              "is_driver_worker")),
    Coupling(f"{_WORKER}._maybe_get_memory_pool_context", OVERRIDES,
             "vLLM's CuMem pool (sleep mode) exists only for CUDA devices", ("tag",)),
    Coupling(f"{_CPU_WORKER}.load_model", OVERRIDES,
             "threads given back after vLLM drops torch to one", ("load_dummy_weights",)),
    Coupling(f"{_CPU_WORKER}.determine_available_memory", OVERRIDES,
             "the KV cache sized from the stand-in device's capacity", ()),
    Coupling(f"{_CPU_WORKER}.init_device", OVERRIDES,
             "no NUMA binding, no thread pinning, the plugin's own model runner", ()),
    Coupling("vllm.v1.worker.gpu_worker.init_worker_distributed_environment", CALLS,
             "HostWorker.init_device sets up torch.distributed as vLLM's workers do",
             ("vllm_config", "rank", "distributed_init_method", "local_rank", "backend")),
    Coupling("vllm.v1.worker.cpu_model_runner.CPUModelRunner.warming_up_model", CALLS,
             "the compiled model is built before the KV cache is sized, as vLLM's CPU "
             "worker does", ()),
    Coupling("vllm.utils.torch_utils.OMP_NUM_THREADS_SET_BY_VLLM", READS,
             "tells a user's OMP_NUM_THREADS from the one vLLM sets for its workers"),
    Coupling("vllm.v1.worker.block_table.ComputeSlotMappingKernel.kernel", OVERRIDES,
             "replaced through the Triton dispatcher by kernels.compute_slot_mapping, which "
             "takes the kernel's parameters by name",
             ("num_tokens", "max_num_tokens", "query_start_loc_ptr", "positions_ptr",
              "block_table_ptr", "block_table_stride", "slot_mapping_ptr",
              "KV_CACHE_BLOCK_SIZE", "TOTAL_CP_WORLD_SIZE", "TOTAL_CP_RANK",
              "CP_KV_CACHE_INTERLEAVE_SIZE", "PAD_ID", "BLOCK_SIZE")),
    # the rejection sampler's kernels (speculative decoding), each replaced by the
    # form in rejection.py of the same name, whose parameters are the kernel's
    *(Coupling(kernel, OVERRIDES, f"replaced through the Triton dispatcher by "
               f"rejection.{form.__name__}, which takes the kernel's parameters by name",
               tuple(inspect.signature(form).parameters))
      for kernel, form in _rejection_forms().items()),
    Coupling("vllm.triton_utils.dispatcher._resolve_kernel", CALLS,
             "finds the registered override to give it a no-op warmup (vLLM's JIT warm-up "
             "asserts every kernel has one)", ("name",)),
    Coupling("vllm.model_executor.warmup.jit_warmup_triton_helper.VllmTritonJitKernel.launch",
             READS, "calls kernel.warmup(grid=..., **kwargs) while warming, which "
             "kernels.register_overrides provides", ("launch_spec", "inputs")),
    Coupling("vllm.v1.attention.backend.AttentionMetadataBuilder._init_reorder_batch_threshold",
             CALLS, "asks vLLM to put decodes first in the batch",
             ("reorder_batch_threshold", "supports_spec_as_decode",
              "supports_dcp_with_varlen")),
    Coupling("vllm.model_executor.layers.linear.UnquantizedLinearMethod.apply", OVERRIDES,
             "host linear layers replace each unquantized layer's quant_method after "
             "loading: vLLM has no platform hook for the unquantized GEMM",
             ("layer", "x", "bias")),
    Coupling("vllm.model_executor.layers.vocab_parallel_embedding.UnquantizedEmbeddingMethod"
             ".apply", OVERRIDES, "the LM head's logits from its packed weight",
             ("layer", "x", "bias")),
    Coupling("torch.accelerator.empty_cache", PATCHES,
             "vLLM's cleanup calls it on every non-CPU platform; it raises without an "
             "accelerator"),
    Coupling("torch.accelerator.empty_host_cache", PATCHES, "as empty_cache"),
    Coupling("torch.ops.mkldnn._reorder_linear_weight", CALLS,
             "packs a weight for oneDNN (the op Inductor's weight freezing uses)"),
    Coupling("torch.ops.mkldnn._linear_pointwise", CALLS, "the product on a packed weight"),
)
