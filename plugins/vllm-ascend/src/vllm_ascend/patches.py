"""Where vllm-ascend changes vLLM or torch at run time, and every private vLLM name it leans on.

Applied whenever vLLM activates the platform in a process. Applying twice is
harmless.

Patched, because no hook exists:

- emulated: ``torch.accelerator.empty_cache`` / ``empty_host_cache``, no-ops
  without an accelerator, which vLLM's cleanup calls on every non-CPU platform
  (:func:`vllm_plugin_kit.patches.no_accelerator_cache_calls`). On an NPU,
  torch_npu provides the accelerator.
- on an NPU: ``torch.cuda``'s stream and event names (:data:`CUDA_STREAM_API`),
  which vLLM's GPU model runner (the NPU model runner's base) calls by name; on
  an Ascend host, where torch.cuda has no device, they are torch_npu's.

Private vLLM names the plugin overrides, calls or reads (checked against the
installed vLLM by ``tests/test_vllm_contract.py``), beside the kit's own
(:data:`vllm_plugin_kit.contract.KIT`): :data:`COUPLINGS`.
"""

from __future__ import annotations

from vllm_plugin_kit.contract import CALLS, OVERRIDES, PATCHES, READS, Coupling
from vllm_plugin_kit.patches import no_accelerator_cache_calls

#: the torch.cuda names vLLM's GPU model runner calls for streams and events
CUDA_STREAM_API = ("Stream", "Event", "current_stream", "stream", "synchronize")

_RUNNER = "vllm.v1.worker.gpu_model_runner.GPUModelRunner"
_WORKER = "vllm.v1.worker.gpu_worker.Worker"
_WRAPPER = "vllm.compilation.cuda_graph.CUDAGraphWrapper"

COUPLINGS = (
    *(Coupling(f"torch.cuda.{name}", PATCHES,
               "vLLM's GPU model runner calls it by name; on an NPU it is torch_npu's")
      for name in CUDA_STREAM_API),
    Coupling(f"{_RUNNER}._zero_block_ids", OVERRIDES,
             "blocks are the second dimension of the NPU's [2, blocks, ...] K/V caches",
             ("block_ids",)),
    Coupling(f"{_RUNNER}._capture_cudagraphs", CALLS,
             "the ACL graphs of each decode batch size are captured by vLLM's own loop",
             ("batch_descriptors", "cudagraph_runtime_mode", "profiler")),
    Coupling(f"{_RUNNER}.initialize_kv_cache_tensors", OVERRIDES,
             "each layer's cache re-laid as separate contiguous K and V caches",
             ("kv_cache_config", "kernel_block_sizes", "kv_cache_allocation_context")),
    Coupling("vllm.v1.worker.cpu_model_runner.CPUModelRunner._zero_block_ids", OVERRIDES,
             "as GPUModelRunner's, on the emulated runner", ("block_ids",)),
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
    if emulated:
        no_accelerator_cache_calls()
        return
    import torch
    import torch_npu  # noqa: F401  (registers torch.npu)

    for name in CUDA_STREAM_API:
        setattr(torch.cuda, name, getattr(torch.npu, name))
