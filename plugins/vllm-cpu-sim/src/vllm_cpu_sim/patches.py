"""The few places where cpu_sim changes vLLM or torch at run time, each because no hook exists.

Applied whenever vLLM activates the platform in a process (the user's process
and every worker; see ``register``). Applying twice is harmless.
"""

from __future__ import annotations

import torch


def _noop(*args: object, **kwargs: object) -> None:
    return None


def apply() -> None:
    # vLLM's cleanup (distributed.parallel_state.cleanup_dist_env_and_memory,
    # called by engine shutdown and by users between engines) calls
    # torch.accelerator.empty_cache() and empty_host_cache() on every non-CPU
    # platform; with no accelerator torch raises, so the engine core dies
    # noisily on exit and the user's cleanup call fails. vLLM's CPU model
    # runner stubs synchronize/empty_cache the same way in its own process.
    if torch.accelerator.current_accelerator() is None:
        torch.accelerator.empty_cache = _noop
        torch.accelerator.empty_host_cache = _noop
