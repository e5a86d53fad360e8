"""The places where vllm-ascend changes vLLM or torch at run time, each because no hook exists.

Applied whenever vLLM activates the platform in a process. Applying twice is
harmless.
"""

from __future__ import annotations

import torch

#: the torch.cuda names vLLM's GPU model runner calls for streams and events
CUDA_STREAM_API = ("Stream", "Event", "current_stream", "stream", "synchronize")


def _noop(*args: object, **kwargs: object) -> None:
    return None


def apply(*, emulated: bool) -> None:
    if emulated:
        # Emulated on the CPU: vLLM's cleanup (cleanup_dist_env_and_memory, run
        # at engine shutdown) calls torch.accelerator.empty_cache() and
        # empty_host_cache() on every non-CPU platform, which raise without an
        # accelerator. On an NPU, torch_npu provides the accelerator.
        if torch.accelerator.current_accelerator() is None:
            torch.accelerator.empty_cache = _noop
            torch.accelerator.empty_host_cache = _noop
        return
    # On an NPU: vLLM's GPU model runner (the NPU model runner's base) creates
    # and waits on streams and events through torch.cuda by name, with no
    # platform hook; on an Ascend host, where torch.cuda has no device, they
    # are torch_npu's.
    import torch_npu  # noqa: F401  (registers torch.npu)

    for name in CUDA_STREAM_API:
        setattr(torch.cuda, name, getattr(torch.npu, name))
