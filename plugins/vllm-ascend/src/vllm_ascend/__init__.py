"""vllm-ascend: vLLM on Huawei Ascend NPUs through torch_npu, or emulated on the CPU.

The platform activates only where it can run: torch_npu imports (CANN is
present) and an NPU is visible, or NPU emulation is selected explicitly
(``VLLM_ASCEND_EMULATE=1``). Anywhere else ``register`` logs one line saying
why and returns None, so this package can sit next to other platform plugins.
"""

from __future__ import annotations

from vllm_plugin_kit import get_logger

__version__ = "0.1.0"

PLUGIN = "ascend"
NPU_PLATFORM = "vllm_ascend.platform.NPUPlatform"
EMULATED_PLATFORM = "vllm_ascend.platform.EmulatedNPUPlatform"
#: "1" selects NPU emulation on the CPU; "0" keeps the plugin off
ENV_EMULATE = "VLLM_ASCEND_EMULATE"


def _npu_visible() -> tuple[bool, str]:
    """Whether torch_npu imports and sees an NPU, and if not, why."""
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except Exception as error:  # without CANN: ImportError, or RuntimeError from torch
        return False, f"torch_npu does not import ({type(error).__name__}: {error})"
    import torch

    try:
        count = torch.npu.device_count()
    except Exception as error:
        return False, f"torch.npu cannot count devices ({error})"
    if count <= 0:
        return False, "torch_npu sees no NPU (check ASCEND_RT_VISIBLE_DEVICES)"
    return True, ""


def register() -> str | None:
    """The ``vllm.platform_plugins`` entry point."""
    from vllm_plugin_kit.settings import read_switch

    from vllm_ascend import npu_ops

    emulate = read_switch(ENV_EMULATE, "vllm-ascend")
    if emulate:
        npu_ops.select(emulated=True)
        return _activate(EMULATED_PLATFORM, emulated=True)
    if emulate is False:
        return None
    visible, why = _npu_visible()
    if not visible:
        # A warning, not info: vLLM configures its logging only after choosing
        # the platform, and until then only warnings reach the terminal.
        get_logger(__name__).warning(
            "vllm-ascend inactive: %s; set %s=1 to emulate the NPU on the CPU", why, ENV_EMULATE)
        return None
    npu_ops.select(emulated=False)
    return _activate(NPU_PLATFORM, emulated=False)


def register_quantization() -> None:
    """The ``vllm.general_plugins`` entry point: the W8A8 method
    (``--quantization ascend``), only where this plugin is vLLM's platform."""
    from vllm.platforms import current_platform

    from vllm_ascend.platform import NPUPlatform

    if isinstance(current_platform, NPUPlatform):
        import vllm_ascend.quantization  # noqa: F401  (registers it with vLLM)


def _activate(platform: str, *, emulated: bool) -> str:
    from vllm_ascend import patches

    patches.apply(emulated=emulated)
    return platform
