"""vllm-ascend's own NPU kernels (``csrc/``), where this install has them.

``_C_ascend.so`` sits next to this module when the package was built on a
host with CANN (see ``csrc/CMakeLists.txt``). :func:`load` loads it once and
says in one log line when it is missing or does not load; the layers then
call torch_npu's built-in op for the same work (rotary embedding:
``npu_mrope``). Launches are counted with the NPU ops' (``npu_ops.launches``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vllm_ascend import get_logger, npu_ops

logger = get_logger(__name__)

LIBRARY = Path(__file__).with_name("_C_ascend.so")
NAMESPACE = "_C_ascend"

#: the library loaded in this process, or None; unset until :func:`load` runs
_loaded: dict[str, Path | None] = {}


def load(path: Path | None = None) -> bool:
    """Load the kernel library (``path``, default the one built into the
    package) unless one is loaded; True when its ops are there."""
    if _loaded.get("library") is not None:
        return True
    if "library" in _loaded and path is None:
        return False
    path = path or LIBRARY
    why = None
    if not path.is_file():
        why = f"{path.name} was not built (CANN was not found when vllm-ascend was installed)"
    else:
        try:
            torch.ops.load_library(str(path))
        except (OSError, RuntimeError) as error:
            why = f"{path} does not load ({error})"
    if why is None and not hasattr(getattr(torch.ops, NAMESPACE), "rotary_embedding"):
        why = f"{path} holds no {NAMESPACE}.rotary_embedding"
    if why is not None:
        logger.info("vllm-ascend native kernels unavailable: %s; using torch_npu's "
                    "built-in ops instead", why)
        _loaded["library"] = None
        return False
    logger.info("vllm-ascend native kernels loaded from %s", path)
    _loaded["library"] = path
    return True


def available() -> bool:
    """Whether the kernel library is loaded (loading it on first use)."""
    return load() if "library" not in _loaded else _loaded["library"] is not None


def rotary_embedding(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                     head_size: int, cos_sin_cache: torch.Tensor, is_neox: bool) -> None:
    """NeoX rotary embedding of query and key (2-D, rows contiguous) in place."""
    npu_ops.launches[f"{NAMESPACE}.rotary_embedding"] += 1
    torch.ops._C_ascend.rotary_embedding(positions, query, key, head_size, cos_sin_cache,
                                         is_neox)
