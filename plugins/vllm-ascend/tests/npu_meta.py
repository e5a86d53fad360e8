"""torch_npu's own meta functions (output shapes and dtypes), read from its wheel.

``torch_npu/op_plugin/meta/_meta_registrations.py`` registers them with
``torch.library`` when torch_npu imports, which needs CANN. Here the file is
read out of the torch-npu 2.13.0 wheel (not installed: without CANN an
installed torch_npu makes ``import torch`` fail) and executed with its
registration decorator capturing each function by op name, and its few
torch_npu imports replaced by stand-ins (an A2 SoC and a CANN version new
enough for every branch the plugin's ops take).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

TORCH_NPU = "torch-npu==2.13.0"
META_FILE = "torch_npu/op_plugin/meta/_meta_registrations.py"
SCHEMAS_FILE = "torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml"
#: Ascend 910B (A2): the SoC number torch_npu reports for it, below the 950's 260
SOC_VERSION = 220
CANN_VERSION = "9.2.0"


def _cache_dir() -> Path:
    root = os.environ.get("VLLM_PLUGINS_CACHE") or Path.home() / ".cache" / "vllm-plugins"
    return Path(root) / "torch-npu"


@cache
def wheel() -> Path:
    """The torch-npu 2.13.0 wheel, fetched once from the package index into the cache."""
    folder = _cache_dir()
    found = sorted(folder.glob("torch_npu-2.13.0-*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        "--only-binary=:all:", TORCH_NPU, "-d", str(folder)],
                       check=True, capture_output=True)
        found = sorted(folder.glob("torch_npu-2.13.0-*.whl"))
    if not found:
        raise RuntimeError(f"no {TORCH_NPU} wheel in {folder}, and pip download found none")
    return found[-1]


def wheel_text(member: str) -> str:
    with zipfile.ZipFile(wheel()) as archive:
        return archive.read(member).decode()


class _ErrCode:
    def __getattr__(self, name: str) -> str:
        return name


class _Ops:
    """``torch.ops.npu.<op>.default`` for the module's has_side_effect calls."""

    def __getattr__(self, name: str) -> Any:
        return self


@cache
def meta_functions() -> dict[str, Callable[..., Any]]:
    path = f"{wheel().name}/{META_FILE}"
    source = wheel_text(META_FILE)
    # torch_npu's imports go (stand-ins below); so does "import torch", which
    # would rebind the stand-in that has torch.ops.npu
    kept = [line for line in source.splitlines()
            if not line.startswith(("import torch_npu", "from torch_npu", "from torch.library"))
            and line.strip() != "import torch"]
    registry: dict[str, Callable[..., Any]] = {}

    def impl(_library: Any, name: str, *args: Any, **kwargs: Any):
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            registry.setdefault(name, fn)
            return fn
        return register

    import torch

    class _Torch:
        """torch, but ``torch.ops.npu`` exists."""

        def __getattr__(self, name: str) -> Any:
            if name == "ops":
                return _TorchOps()
            return getattr(torch, name)

    class _TorchOps:
        def __getattr__(self, name: str) -> Any:
            return _Ops() if name == "npu" else getattr(torch.ops, name)

    class _TorchNpu:
        """torch_npu's own dtypes (int4, float4_e2m1fn_x2, ...): names that equal
        no torch dtype, as none of the plugin's calls passes one."""

        def __getattr__(self, name: str) -> str:
            return f"torch_npu.{name}"

    namespace: dict[str, Any] = {
        "__name__": "torch_npu_meta", "__file__": path, "torch": _Torch(),
        "torch_npu": _TorchNpu(),
        "Library": lambda *args, **kwargs: None, "impl": impl,
        "ErrCode": _ErrCode(), "ops_error": lambda *args: "",
        "get_cann_version": lambda: CANN_VERSION, "get_soc_version": lambda: SOC_VERSION,
    }
    exec(compile("\n".join(kept), path, "exec"), namespace)
    # ScalarType numbers of torch's own dtypes (torch_npu's start at 285)
    _DTYPE_NUMBERS.update({dtype: number for number, dtype in
                           namespace["TORCH_DTYPE_ENUM_VALUE_TO_SCALAR_TYPE_MAP"].items()
                           if number < 256})
    return registry


#: torch dtype -> the ScalarType number a meta function receives for it
_DTYPE_NUMBERS: dict[Any, int] = {}


def meta_of(op: str, *args: Any, **kwargs: Any) -> Any:
    """The meta function's outputs for ``args`` moved to the meta device; a
    dtype becomes its ScalarType number, as the dispatcher passes it to an
    ``int`` argument of the schema."""
    import torch

    meta = meta_functions()[op]

    def to_meta(value: Any) -> Any:
        if isinstance(value, torch.dtype):
            return _DTYPE_NUMBERS[value]
        if isinstance(value, torch.Tensor):
            return value.to("meta")
        if isinstance(value, (list, tuple)):
            return type(value)(to_meta(v) for v in value)
        return value

    return meta(*to_meta(args), **{k: to_meta(v) for k, v in kwargs.items()})
