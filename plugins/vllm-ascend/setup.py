"""Build of vllm-ascend: the Python package, plus its native NPU kernels where CANN is.

Everything about the package is in pyproject.toml; this file only adds the
native step to ``build_py``: CMake configures ``csrc/`` and, when it found
CANN (``ASCEND_HOME_PATH``), builds ``_C_ascend.so`` into the package. Without
CANN the configure step prints one line saying it skipped, and the package
installs as pure Python (vllm-ascend then uses torch_npu's built-in ops).
Building the kernels needs torch and torch_npu in the building Python:
``pip install --no-build-isolation``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).parent.resolve()
CSRC = HERE / "csrc"
LIBRARY = "_C_ascend.so"
WITH_CANN = bool(os.environ.get("ASCEND_HOME_PATH"))


def _cmake() -> str:
    found = shutil.which("cmake")
    if found is None:
        raise RuntimeError("vllm-ascend's build runs CMake (csrc/CMakeLists.txt); install cmake")
    return found


class BuildWithNativeKernels(build_py):
    def run(self) -> None:
        super().run()
        build_dir = Path(self.build_lib).parent / "vllm-ascend-csrc"
        build_dir.mkdir(parents=True, exist_ok=True)
        # without CANN this prints its one line and leaves the "skipped" marker
        subprocess.run([_cmake(), "-S", str(CSRC), "-B", str(build_dir), "--no-warn-unused-cli",
                        f"-DPython_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release"],
                       check=True)
        if (build_dir / "native_kernels.skipped").is_file():
            return
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run([_cmake(), "--build", str(build_dir), "--target", "_C_ascend",
                        "-j", jobs], check=True)
        target = Path(self.build_lib) / "vllm_ascend" / LIBRARY
        shutil.copy2(build_dir / LIBRARY, target)


class NativeDistribution(Distribution):
    """A wheel with the native library is specific to this platform."""

    def has_ext_modules(self) -> bool:
        return WITH_CANN


setup(cmdclass={"build_py": BuildWithNativeKernels}, distclass=NativeDistribution)
