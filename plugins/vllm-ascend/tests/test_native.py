"""vllm-ascend's own kernels (csrc/): the CMake configure step without CANN, and
the rotary-embedding layer's choice between the kernel library and torch_npu's
built-in ``npu_mrope``, both ways.

No CANN here, so the AscendC kernel itself is not built; the library that
shows the "present" choice is the binding built for the CPU (the same op
schema, with csrc/emulation's implementation of the kernel's arithmetic),
checked against the same RoPE references as npu_mrope.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vllm_ascend import emulation

CSRC = Path(__file__).parents[1] / "csrc"

pytestmark = pytest.mark.xdist_group("native")


def _configure(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    cmake = shutil.which("cmake")
    assert cmake, "the test extras install cmake"
    environ = {k: v for k, v in os.environ.items() if k != "ASCEND_HOME_PATH"}
    return subprocess.run([cmake, "-S", str(CSRC), "-B", str(tmp_path / "build")],
                          capture_output=True, text=True, env={**environ, **env})


def test_configure_skips_without_cann(tmp_path):
    result = _configure(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "vllm-ascend" in line]
    assert lines == ["-- vllm-ascend: CANN not found (ASCEND_HOME_PATH is not set): skipping "
                     "vllm-ascend's native kernels; torch_npu's built-in ops are used instead"]
    assert (tmp_path / "build" / "native_kernels.skipped").is_file()
    assert not (tmp_path / "build" / "native_kernels.enabled").exists()


def test_configure_refuses_a_cann_path_without_ascendc(tmp_path):
    fake = tmp_path / "cann"
    fake.mkdir()
    result = _configure(tmp_path, ASCEND_HOME_PATH=str(fake))
    assert result.returncode != 0
    assert "has no AscendC toolchain (ascendc.cmake)" in result.stderr
    assert not (tmp_path / "build" / "native_kernels.enabled").exists()


@pytest.fixture(scope="module")
def cpu_library() -> Path:
    """The kernels' torch binding built for the CPU, once per machine (cached)."""
    from torch.utils.cpp_extension import load

    from vllm_harness.models import cache_root

    build = cache_root() / "torch-extensions" / "vllm_ascend_C_emulated"
    build.mkdir(parents=True, exist_ok=True)
    load(name="vllm_ascend_C_emulated", is_python_module=False, build_directory=str(build),
         sources=[str(CSRC / "torch_schema.cpp"),
                  str(CSRC / "emulation" / "rotary_embedding_cpu.cpp")],
         extra_include_paths=[str(CSRC)], extra_cflags=["-O2"])
    return build / "vllm_ascend_C_emulated.so"


def _rope_reference(positions, query, key, cache, head_size):
    return emulation.npu_mrope(positions, query, key, cache, head_size, rotary_mode="half")


def test_cpu_binding_matches_the_references(cpu_library):
    tokens, head_size, rot, max_pos = 7, 64, 32, 40
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    angles = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]
    cache = torch.cat((angles.cos(), angles.sin()), -1)
    positions = torch.tensor([0, 5, 39, 2, 2, 17, 8])
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        qkv = torch.randn(tokens, 6 * head_size).to(dtype)
        query, key = qkv[:, : 4 * head_size], qkv[:, 4 * head_size:]  # strided views
        want_q, want_k = _rope_reference(positions, query.contiguous(), key.contiguous(),
                                         cache.to(dtype), head_size)
        torch.ops._C_ascend.rotary_embedding(positions, query, key, head_size, cache.to(dtype),
                                             True)
        torch.testing.assert_close(query.float(), want_q.float(), rtol=tol, atol=tol)
        torch.testing.assert_close(key.float(), want_k.float(), rtol=tol, atol=tol)
    with pytest.raises(RuntimeError, match="only the NeoX"):
        torch.ops._C_ascend.rotary_embedding(positions, query, key, head_size,
                                             cache.to(query.dtype), False)
    with pytest.raises(RuntimeError, match="outside cos_sin_cache"):
        torch.ops._C_ascend.rotary_embedding(torch.tensor([40] * tokens), query, key,
                                             head_size, cache.to(query.dtype), True)


LAYER_RUN = r"""
import json, logging, sys
from pathlib import Path
import torch
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm_ascend import emulation, native, npu_ops, ops

logging.basicConfig(level=logging.INFO)  # an engine process configures vLLM's logging
library = sys.argv[1]
if library:
    assert native.load(Path(library))
with set_current_vllm_config(VllmConfig()):
    ops.register()
    rope = get_rope(64, max_position=128, is_neox_style=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
positions = torch.tensor([3, 0, 127, 9])
query, key = torch.randn(4, 4 * 64), torch.randn(4, 2 * 64)
want = emulation.npu_mrope(positions, query, key, rope.cos_sin_cache, 64)
with npu_ops.counting() as seen:
    got = rope(positions, query.clone(), key.clone())
print(json.dumps({"layer": type(rope).__name__, "launches": dict(seen),
                  "available": native.available(),
                  "equal": [bool(torch.allclose(g, w, atol=1e-5)) for g, w in zip(got, want)]}))
"""


def _run_layer(library: str) -> tuple[dict, str]:
    env = {**os.environ, "VLLM_ASCEND_EMULATE": "1", "VLLM_PLUGINS": "ascend"}
    result = subprocess.run([sys.executable, "-c", LAYER_RUN, library], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout + result.stderr


def test_without_the_library_the_layer_uses_npu_mrope():
    report, log = _run_layer("")
    assert report["layer"] == "AscendRotaryEmbedding"
    assert report["available"] is False
    assert report["launches"] == {"npu_mrope": 1}
    assert report["equal"] == [True, True]
    assert log.count("vllm-ascend native kernels unavailable: _C_ascend.so was not built") == 1


def test_with_the_library_the_layer_uses_its_kernel(cpu_library):
    report, log = _run_layer(str(cpu_library))
    assert report["available"] is True
    assert report["launches"] == {"_C_ascend.rotary_embedding": 1}
    assert report["equal"] == [True, True]
    assert "vllm-ascend native kernels loaded from" in log
