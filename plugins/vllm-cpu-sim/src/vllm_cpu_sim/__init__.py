"""vllm-cpu-sim: vLLM's V1 engine on the CPU through the out-of-tree platform path."""

from __future__ import annotations

__version__ = "0.1.0"

PLATFORM = "vllm_cpu_sim.platform.CpuSimPlatform"


def _accelerator_visible() -> bool:
    import torch

    for name in ("cuda", "xpu"):
        backend = getattr(torch, name, None)
        try:
            if backend is not None and backend.is_available():
                return True
        except Exception:  # a broken driver is not an accelerator we can use
            continue
    return False


def register() -> str | None:
    """The ``vllm.platform_plugins`` entry point.

    Active by default so that ``vllm serve`` works with no flag on a machine
    without an accelerator. ``VLLM_CPU_SIM=0`` keeps it off; ``VLLM_CPU_SIM=1``
    forces it on even where a GPU is visible. Another plugin can be chosen
    with ``VLLM_PLUGINS``, which stops this one from loading at all.
    """
    from vllm_plugin_kit.settings import read_switch

    from vllm_cpu_sim.envs import ENV_ENABLE

    on = read_switch(ENV_ENABLE, "cpu_sim")
    if on is None:
        return None if _accelerator_visible() else _activate()
    return _activate() if on else None


def _activate() -> str:
    """vLLM calls ``register`` in every process that resolves its platform (the
    user's and each worker), so this is where the platform's patches apply."""
    from vllm_cpu_sim import patches

    patches.apply()
    return PLATFORM
