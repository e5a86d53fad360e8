"""Where this plugin changes torch at run time, because vLLM offers no hook.

Applied whenever vLLM activates the platform in a process (the user's process
and every worker; see ``register``). Keep every
such change in this module, with the reason, so it is easy to drop when
upstream grows a hook.
"""

from __future__ import annotations

import torch


def _noop(*args: object, **kwargs: object) -> None:
    return None


def apply() -> None:
    # vLLM's cleanup (distributed.parallel_state.cleanup_dist_env_and_memory,
    # run at engine shutdown and by users between engines) calls
    # torch.accelerator.empty_cache() and empty_host_cache() on every non-CPU
    # platform; with no accelerator torch raises.
    # Your device: drop this once torch.accelerator knows it.
    if torch.accelerator.current_accelerator() is None:
        torch.accelerator.empty_cache = _noop
        torch.accelerator.empty_host_cache = _noop
