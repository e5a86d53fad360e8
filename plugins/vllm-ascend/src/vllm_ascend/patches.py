"""The places where vllm-ascend changes vLLM or torch at run time, each because no hook exists.

Applied whenever vLLM activates the platform in a process. Applying twice is
harmless.
"""

from __future__ import annotations

import torch


def _noop(*args: object, **kwargs: object) -> None:
    return None


def apply() -> None:
    # Emulated on the CPU: vLLM's cleanup (cleanup_dist_env_and_memory, run at
    # engine shutdown) calls torch.accelerator.empty_cache() and
    # empty_host_cache() on every non-CPU platform, which raise without an
    # accelerator. On an NPU, torch_npu provides the accelerator.
    if torch.accelerator.current_accelerator() is None:
        torch.accelerator.empty_cache = _noop
        torch.accelerator.empty_host_cache = _noop
