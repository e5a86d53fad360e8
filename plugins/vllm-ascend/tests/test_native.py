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
from vllm_ascend import native, npu_ops, ops
from vllm_ascend.attention import (
    AscendAttentionImpl, AscendMetadata, AttentionState, compressed_causal_mask)

logging.basicConfig(level=logging.INFO)  # an engine process configures vLLM's logging
library, ropes = sys.argv[1], json.loads(sys.argv[2])
if library:
    assert native.load(Path(library))
HEAD, HEADS, KV_HEADS, BLOCK = 64, 4, 2, 128
positions = torch.tensor([3, 0, 127, 9])
# two requests of two tokens (a fresh prefill), then the four as one-token decodes
states = {
    AttentionState.PREFILL_NO_CACHE: ([2, 4], [2, 2], [[1], [2]], [128, 129, 256, 257]),
    AttentionState.DECODE_ONLY: ([1, 2, 3, 4], [1, 1, 1, 1], [[1], [2], [3], [4]],
                                 [128, 256, 384, 512]),
}


def attention(query, key, value):
    # as vLLM's attention layer hands them over: [tokens, heads, head] views
    impl = AscendAttentionImpl(HEADS, HEAD, HEAD ** -0.5, KV_HEADS)
    layer = type("Layer", (), {"layer_name": "model.layers.0.self_attn.attn"})()
    outputs = []
    for state, (cumulative, lens, table, slots) in states.items():
        meta = AscendMetadata(
            state=state, num_actual_tokens=4, cumulative_query_lens=cumulative,
            seq_lens=lens, block_table=torch.tensor(table, dtype=torch.int32),
            slot_mapping=torch.tensor(slots), mask=compressed_causal_mask(torch.device("cpu")))
        output = torch.empty(4, HEADS, HEAD)
        impl.forward(layer, query.view(4, HEADS, HEAD), key.view(4, KV_HEADS, HEAD),
                     value.view(4, KV_HEADS, HEAD),
                     torch.zeros(2, 5, BLOCK, KV_HEADS, HEAD), meta, output)
        outputs.append(output)
    return outputs


reports = {}
for name, parameters in ropes.items():
    with set_current_vllm_config(VllmConfig()):
        ops.register()
        rope = get_rope(HEAD, max_position=128, is_neox_style=True,
                        rope_parameters=parameters)
    qkv = torch.randn(4, (HEADS + 2 * KV_HEADS) * HEAD)
    # strided views of the QKV projection, as a decoder layer splits it
    query, key, value = qkv.split([HEADS * HEAD, KV_HEADS * HEAD, KV_HEADS * HEAD], -1)
    want = rope.forward_native(positions, query.clone(), key.clone())  # vLLM's own
    with npu_ops.counting() as seen:
        got = rope(positions, query, key)
    report = {"layer": type(rope).__name__, "launches": dict(seen),
              "equal": [bool(torch.allclose(g, w, atol=1e-5)) for g, w in zip(got, want)]}
    try:
        attended = attention(*got, value)
        report["attention"] = "ok"
        # a strided Q, K and V give what contiguous copies of them give
        expected = attention(*(t.contiguous() for t in (*got, value)))
        report["attention_equal"] = all(torch.equal(a, e) for a, e in zip(attended, expected))
    except ValueError as error:
        report["attention"] = str(error)
    reports[name] = report
print(json.dumps({"available": native.available(), "ropes": reports}))
"""

#: rope_parameters of the base rotation and of vLLM's subclasses that differ from
#: it only in their cos/sin cache (Llama 3.x, YaRN): each must reach the kernels
ROPES = {
    "RotaryEmbedding": {"rope_type": "default", "rope_theta": 10000.0},
    "Llama3RotaryEmbedding": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 32},
    "YaRNScalingRotaryEmbedding": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                   "original_max_position_embeddings": 32},
}


def _run_layer(library: str) -> tuple[dict, str]:
    env = {**os.environ, "VLLM_ASCEND_EMULATE": "1", "VLLM_PLUGINS": "ascend"}
    result = subprocess.run([sys.executable, "-c", LAYER_RUN, library, json.dumps(ROPES)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout + result.stderr


def _check_ropes(report: dict, launches: dict[str, int]) -> None:
    """Every rotary class on the NPU layer, its kernel launched once, vLLM's
    result, and the query it leaves taken by the fused attention kernel."""
    assert set(report["ropes"]) == set(ROPES)
    for name, rope in report["ropes"].items():
        assert rope["layer"] == f"Ascend{name}", rope
        assert rope["launches"] == launches, (name, rope)
        assert rope["equal"] == [True, True], (name, rope)
        assert rope["attention"] == "ok", (name, rope)
        assert rope["attention_equal"] is True, (name, rope)


def test_without_the_library_the_layer_uses_npu_mrope():
    report, log = _run_layer("")
    assert report["available"] is False
    _check_ropes(report, {"npu_mrope": 1})
    assert log.count("vllm-ascend native kernels unavailable: _C_ascend.so was not built") == 1


def test_with_the_library_the_layer_uses_its_kernel(cpu_library):
    """The kernel rotates the QKV projection's views in place: the query it
    leaves is strided, and the attention layer must still hand the fused
    attention kernel a contiguous one (which refuses any other)."""
    report, log = _run_layer(str(cpu_library))
    assert report["available"] is True
    _check_ropes(report, {"_C_ascend.rotary_embedding": 1})
    assert "vllm-ascend native kernels loaded from" in log


def test_rotary_subclasses_on_the_npu_are_those_with_the_base_rotation():
    """vLLM's subclasses of RotaryEmbedding reach the NPU kernels exactly when
    their forward is RotaryEmbedding's (they differ only in the cos/sin cache);
    one with a forward of its own stays on it. Fails on a vLLM that adds or
    changes one, naming it."""
    import vllm.model_executor.layers.rotary_embedding as package
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

    from vllm_ascend.ops import LAYERS, ROTARY_CACHE_VARIANTS

    def subclasses(cls: type) -> list[type]:
        return [s for c in cls.__subclasses__() for s in (c, *subclasses(c))]

    vllms = {cls for cls in subclasses(RotaryEmbedding)
             if cls.__module__.startswith(package.__name__)}
    own_forward = {cls for cls in vllms
                   if any(name.startswith("forward") for cls_ in cls.__mro__
                          if cls_ not in RotaryEmbedding.__mro__ for name in vars(cls_))}
    assert set(ROTARY_CACHE_VARIANTS) == vllms - own_forward
    assert own_forward, "the test no longer sees a subclass left on vLLM's forward"
    for cls in ROTARY_CACHE_VARIANTS:
        base, layer = LAYERS[cls.__name__]
        assert base is cls and issubclass(layer, cls)
        assert layer.forward_oot is LAYERS["RotaryEmbedding"][1].forward_oot
