"""Where vllm-ascend changes vLLM or torch at run time, and every private vLLM name it leans on.

Applied whenever vLLM activates the platform in a process. Applying twice is
harmless.

Patched, because no hook exists:

- ``torch.cuda``'s stream and event names (:data:`CUDA_STREAM_API`), which
  vLLM's GPU model runner (the NPU model runner's base) calls by name; on an
  Ascend host, where torch.cuda has no device, they are torch.npu's.
- ``vllm.v1.worker.gpu_worker.kernel_warmup``, which vLLM's GPU worker (the NPU
  worker's base) calls at start-up to tune CUDA and Triton kernels: the NPU's
  warm-up instead (:func:`vllm_ascend.worker.kernel_warmup`).
- ``vllm.v1.worker.gpu_model_runner.graph_capture``, the context vLLM's runner
  measures its graphs' memory in: it asserts a CUDA or XPU communicator once
  tensor parallelism is on; the NPU's capture stream instead
  (:func:`vllm_ascend.npu_graphs.graph_capture`).
- emulated: ``torch.npu``, the memory and synchronisation calls of
  ``torch.accelerator`` and ``torch.Event``, which torch_npu provides on an NPU
  (it is the accelerator there): the emulated device runtime's
  (:func:`vllm_ascend.emulated.runtime.install`).

Private vLLM names the plugin overrides, calls or reads (checked against the
installed vLLM by ``tests/test_vllm_contract.py``), beside the kit's own
(:data:`vllm_plugin_kit.contract.KIT`): :data:`COUPLINGS`.
"""

from __future__ import annotations

from vllm_plugin_kit.contract import CALLS, OVERRIDES, PATCHES, READS, Coupling

#: the torch.cuda names vLLM's GPU model runner calls for streams and events
CUDA_STREAM_API = ("Stream", "Event", "current_stream", "stream", "synchronize")

_RUNNER = "vllm.v1.worker.gpu_model_runner.GPUModelRunner"
_WORKER = "vllm.v1.worker.gpu_worker.Worker"
_WRAPPER = "vllm.compilation.cuda_graph.CUDAGraphWrapper"

COUPLINGS = (
    *(Coupling(f"torch.cuda.{name}", PATCHES,
               "vLLM's GPU model runner calls it by name; on an NPU it is torch_npu's")
      for name in CUDA_STREAM_API),
    Coupling("vllm.v1.worker.gpu_worker.kernel_warmup", PATCHES,
             "vLLM's GPU worker warms CUDA and Triton kernels with it; the NPU's warm-up "
             "runs in its place", ("worker", "process_local_only")),
    Coupling("vllm.v1.worker.gpu_model_runner.graph_capture", PATCHES,
             "vLLM's runner captures graphs inside it, asserting a CUDA or XPU communicator; "
             "the NPU's capture stream in its place", ("device",)),
    Coupling(f"{_RUNNER}.profile_cudagraph_memory", OVERRIDES,
             "NPUWorker estimates the ACL graphs' memory as vLLM does for CUDA, before "
             "the KV cache takes the rest; the override keeps other engines' graphs, "
             "which vLLM's profile clears", ()),
    Coupling(f"{_WRAPPER}._all_instances", READS,
             "every graph wrapper in the process, whose graphs vLLM's profile clears"),
    Coupling("vllm.model_executor.warmup.jit_warmup.JitWarmupRegistry.warmup", CALLS,
             "the NPU's kernel warm-up warms the JIT kernels vLLM registered (the runner's "
             "jit_warmup_registry)", ()),
    Coupling(f"{_WORKER}._maybe_get_memory_pool_context", OVERRIDES,
             "vLLM's sleep-mode pool exists for CUDA and XPU only; none on an NPU",
             ("tag",)),
    Coupling(f"{_RUNNER}._zero_block_ids", OVERRIDES,
             "blocks are the second dimension of the NPU's [2, blocks, ...] K/V caches",
             ("block_ids",)),
    Coupling(f"{_RUNNER}._capture_cudagraphs", CALLS,
             "the ACL graphs of each decode batch size are captured by vLLM's own loop",
             ("batch_descriptors", "cudagraph_runtime_mode", "profiler")),
    Coupling(f"{_RUNNER}.initialize_kv_cache_tensors", OVERRIDES,
             "each layer's cache allocated as separate contiguous K and V caches, in place "
             "of vLLM's allocation (never beside it)",
             ("kv_cache_config", "kernel_block_sizes", "kv_cache_allocation_context")),
    Coupling("vllm.v1.cudagraph_dispatcher.CudagraphDispatcher.get_capture_descs", CALLS,
             "names the decode graphs to capture (the runner's cudagraph_dispatcher)", ()),
    Coupling(f"{_WORKER}._init_workspace_and_model_runner", CALLS,
             "NPUWorker.init_device ends as vLLM's worker does, building the runner", ()),
    Coupling(f"{_WORKER}._make_model_runner", OVERRIDES,
             "the NPU model runner in place of vLLM's GPU one", ()),
    Coupling(f"{_WRAPPER}.clear_graphs", OVERRIDES, "drops the recorded attention tasks too",
             ()),
    Coupling(f"{_WRAPPER}.__init__", CALLS,
             "the ACL graph wrapper is vLLM's CUDA one, its graphs in the wrapper's "
             "concrete_cudagraph_entries, set here",
             ("runnable", "vllm_config", "runtime_mode", "cudagraph_options")),
    Coupling("vllm.compilation.cuda_graph.CUDAGraphEntry", CALLS,
             "an ACL graph stored as vLLM's entry", None),
    Coupling("vllm.compilation.monitor.validate_cudagraph_capturing_enabled", CALLS,
             "captures only while vLLM's capture switch is on", ()),
    Coupling("vllm.compilation.monitor.set_cudagraph_capturing_enabled", CALLS,
             "the capture switch around capture_model", ("enabled",)),
    Coupling("vllm.v1.worker.utils.request_memory", CALLS,
             "NPUWorker.init_device sizes the request as vLLM's GPU worker does",
             ("init_snapshot", "cache_config", "external_weight_memory")),
    Coupling("vllm.v1.attention.backends.utils.NULL_BLOCK_ID", READS,
             "padded tokens write to the null block (the NPU's cache write takes slots in "
             "range only)"),
)


def apply(*, emulated: bool) -> None:
    """At the platform's activation (vLLM is still resolving its platform, so
    nothing here may import vLLM's worker or model modules)."""
    import torch

    if emulated:
        from vllm_ascend.emulated import runtime

        runtime.install()
    else:
        import torch_npu  # noqa: F401  (registers torch.npu)
    for name in CUDA_STREAM_API:
        setattr(torch.cuda, name, getattr(torch.npu, name))


def apply_to_worker() -> None:
    """When the NPU worker is built, in its process."""
    from vllm.v1.worker import gpu_model_runner, gpu_worker

    from vllm_ascend import npu_graphs
    from vllm_ascend.worker import kernel_warmup

    gpu_worker.kernel_warmup = kernel_warmup
    gpu_model_runner.graph_capture = npu_graphs.graph_capture
