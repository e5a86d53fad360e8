"""The few places where cpu_sim changes vLLM or torch at run time, each because no hook exists.

Applied once per process by the worker, before the model runner is built.
"""

from __future__ import annotations

import torch


def _noop(*args: object, **kwargs: object) -> None:
    return None


def apply() -> None:
    # vLLM's engine shutdown (distributed.parallel_state.cleanup_dist_env_and_memory)
    # calls torch.accelerator.empty_host_cache() on every non-CPU platform; with
    # no accelerator torch raises, and the engine core dies noisily on exit.
    # vLLM's CPU model runner stubs synchronize/empty_cache the same way.
    torch.accelerator.empty_host_cache = _noop
