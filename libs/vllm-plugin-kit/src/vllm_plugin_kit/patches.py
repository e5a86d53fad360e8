"""Run-time changes a host stand-in needs where vLLM offers no hook.

A plugin applies them from its ``register`` (vLLM calls it in every process
that resolves its platform: the user's and each worker) and lists them, with
every other coupling to vLLM's internals, in its own ``patches`` module.
"""

from __future__ import annotations

import torch


def _noop(*args: object, **kwargs: object) -> None:
    return None


def no_accelerator_cache_calls() -> bool:
    """Make ``torch.accelerator.empty_cache`` / ``empty_host_cache`` no-ops where
    torch sees no accelerator; returns whether it did.

    vLLM's cleanup (``cleanup_dist_env_and_memory``, run at engine shutdown and
    by users between engines) calls both on every platform that is not vLLM's
    own CPU one; without an accelerator torch raises, so the engine core dies
    noisily on exit and the user's cleanup call fails. vLLM's CPU model runner
    stubs them the same way in its own process. Applying twice is harmless.
    """
    if torch.accelerator.current_accelerator() is not None:
        return False
    torch.accelerator.empty_cache = _noop
    torch.accelerator.empty_host_cache = _noop
    return True
