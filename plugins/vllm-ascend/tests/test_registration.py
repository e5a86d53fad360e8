"""When the platform activates, each case in a fresh process, and what it refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

PROBE = (
    "from vllm.platforms import current_platform\n"
    "print(type(current_platform).__module__ + '.' + type(current_platform).__name__)\n"
)
EMULATED = "vllm_ascend.platform.EmulatedNPUPlatform"
NONE = "vllm.platforms.interface.UnspecifiedPlatform"


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items()
            if k not in ("VLLM_ASCEND_EMULATE", "VLLM_PLUGINS")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, timeout=120)


def test_entry_point_is_declared():
    (ep,) = [e for e in entry_points(group="vllm.platform_plugins") if e.name == "ascend"]
    assert ep.value == "vllm_ascend:register"


@pytest.mark.parametrize(("env", "expected"), [
    ({"VLLM_PLUGINS": "ascend"}, NONE),  # no CANN, no NPU, no emulation: inactive
    ({"VLLM_PLUGINS": "ascend", "VLLM_ASCEND_EMULATE": "1"}, EMULATED),
    ({"VLLM_PLUGINS": "ascend", "VLLM_ASCEND_EMULATE": "0"}, NONE),
    ({"VLLM_PLUGINS": "ascend", "VLLM_ASCEND_EMULATE": "maybe"}, NONE),
])
def test_activation(env, expected):
    result = _run(PROBE, **env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == expected


def test_inactive_says_why_in_one_line():
    code = "import vllm_ascend\nprint('->', vllm_ascend.register())\n"
    result = _run(code, VLLM_LOGGING_LEVEL="INFO")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("-> None")
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if "vllm-ascend inactive" in line]
    assert len(lines) == 1
    assert "torch_npu does not import" in lines[0] and "VLLM_ASCEND_EMULATE=1" in lines[0]


def test_import_needs_no_torch_npu():
    code = "import importlib.util, vllm_ascend\nprint(importlib.util.find_spec('torch_npu'))\n"
    result = _run(code)
    assert result.returncode == 0 and result.stdout.strip() == "None", result.stderr[-2000:]


def test_platform_shape():
    import torch
    from vllm.platforms.interface import PlatformEnum

    from vllm_ascend.platform import EmulatedNPUPlatform, NPUPlatform

    assert NPUPlatform._enum is PlatformEnum.OOT
    assert (NPUPlatform.device_type, NPUPlatform.dispatch_key, NPUPlatform.dist_backend) == (
        "npu", "PrivateUse1", "hccl")
    assert NPUPlatform.device_control_env_var == "ASCEND_RT_VISIBLE_DEVICES"
    assert (EmulatedNPUPlatform.device_type, EmulatedNPUPlatform.dist_backend) == (
        "cpu", "gloo")
    with pytest.raises(ValueError, match=r"does not run dtype=float32.*bfloat16 or.*float16"):
        NPUPlatform.check_if_supports_dtype(torch.float32)
    with pytest.raises(ValueError, match="emulated on the CPU does not run dtype=float16"):
        EmulatedNPUPlatform.check_if_supports_dtype(torch.float16)


def _config(model_dir: str, dtype: str = "float32", **kwargs):
    from vllm.config import CacheConfig, ModelConfig, VllmConfig

    block = kwargs.pop("block_size", None)
    cache = CacheConfig(block_size=block) if block else CacheConfig()
    return VllmConfig(model_config=ModelConfig(model=model_dir, dtype=dtype,
                                               max_model_len=256),
                      cache_config=cache, **kwargs)


def test_config_defaults_and_refusals(tiny_model_dir):
    config = _config(tiny_model_dir)  # the emulated platform is current (conftest)
    assert config.cache_config.block_size == 128
    assert config.parallel_config.worker_cls == "vllm_ascend.worker.NPUWorker"
    assert "all" in config.compilation_config.custom_ops
    with pytest.raises(ValueError, match="blocks of 128 to 512 tokens, multiples of 128"):
        _config(tiny_model_dir, block_size=64)
    assert _config(tiny_model_dir, block_size=256).cache_config.block_size == 256
    with pytest.raises(ValueError, match=r"unknown additional_config.ascend keys \['nz'\]"):
        _config(tiny_model_dir, additional_config={"ascend": {"nz": 1}})
    with pytest.raises(ValueError, match="device_memory='lots' is not a memory size"):
        _config(tiny_model_dir, additional_config={"ascend": {"device_memory": "lots"}})
    from vllm.config import ModelConfig

    # vLLM's sleep mode needs a CUDA or XPU memory pool: refused by vLLM itself
    with pytest.raises(ValueError, match="Sleep mode is not supported on current platform"):
        ModelConfig(model=tiny_model_dir, enable_sleep_mode=True)


def test_graph_mode(tiny_model_dir):
    """ACL graphs of decode steps unless graphs are off; emulated, of up to 8
    requests (each captured size costs a forward pass recorded on the host)."""
    from vllm.config import CompilationConfig, CUDAGraphMode

    compilation = _config(tiny_model_dir).compilation_config
    assert compilation.cudagraph_mode == CUDAGraphMode.FULL_DECODE_ONLY
    assert compilation.cudagraph_capture_sizes == [1, 2, 4, 8]
    assert compilation.max_cudagraph_capture_size == 8
    eager = _config(tiny_model_dir, compilation_config=CompilationConfig(
        cudagraph_mode=CUDAGraphMode.NONE)).compilation_config
    assert (eager.cudagraph_mode, eager.cudagraph_capture_sizes) == (CUDAGraphMode.NONE, [])
    wide = _config(tiny_model_dir, compilation_config=CompilationConfig(
        cudagraph_capture_sizes=[4, 16])).compilation_config
    assert wide.cudagraph_capture_sizes == [4]


def test_the_runners_wrap_the_model_in_acl_graphs(tiny_model_dir):
    """Where vLLM's GPU runner would put its CUDA graph wrapper, the model is in
    the ACL graph wrapper; without graphs it is left bare."""
    import torch
    from vllm.compilation.cuda_graph import CUDAGraphWrapper
    from vllm.config import CompilationConfig, CUDAGraphMode

    from vllm_ascend.acl_graph import ACLGraphWrapper
    from vllm_ascend.model_runner import ACLGraphModel

    class GPURunnerLoad:  # what vLLM's GPU runner's load_model leaves
        def __init__(self, config) -> None:
            self.vllm_config, self.compilation_config = config, config.compilation_config

        def load_model(self) -> None:
            self.model = torch.nn.Linear(2, 2)
            if self.compilation_config.cudagraph_mode.has_full_cudagraphs():
                self.model = CUDAGraphWrapper(self.model, self.vllm_config,
                                              CUDAGraphMode.FULL)

    class Runner(ACLGraphModel, GPURunnerLoad):
        pass

    runner = Runner(_config(tiny_model_dir))
    runner.load_model()
    assert type(runner.model) is ACLGraphWrapper
    assert isinstance(runner.model.runnable, torch.nn.Linear)
    eager = Runner(_config(tiny_model_dir, compilation_config=CompilationConfig(
        cudagraph_mode=CUDAGraphMode.NONE)))
    eager.load_model()
    assert isinstance(eager.model, torch.nn.Linear)


def test_npu_platform_picks_the_device_worker(tiny_model_dir):
    """The platform takes vLLM's GPU worker and runner made for the NPU, on an NPU
    as under emulation; the worker module imports without torch_npu."""
    from vllm_ascend.platform import NPUPlatform
    from vllm_ascend.worker import NPUWorker

    config = _config(tiny_model_dir, dtype="bfloat16")
    config.parallel_config.worker_cls = "auto"
    NPUPlatform.check_and_update_config(config)
    assert config.parallel_config.worker_cls == "vllm_ascend.worker.NPUWorker"
    assert config.cache_config.block_size == 128
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_worker import Worker

    assert issubclass(NPUWorker, Worker) and not issubclass(NPUWorker, CPUWorker)
    with pytest.raises(ValueError, match="on the NPU does not run dtype=float32"):
        NPUPlatform.check_and_update_config(_config(tiny_model_dir))


def test_device_settings_read_as_in_every_plugin():
    from vllm_plugin_kit.testing import check_device_settings

    from vllm_ascend.envs import SETTINGS

    check_device_settings(SETTINGS)


def test_readme_settings_table_is_current():
    """The README's table is generated from the settings (python -m vllm_plugin_kit
    readme README.md vllm_ascend.envs:SETTINGS)."""
    from pathlib import Path

    from vllm_plugin_kit.settings import readme_is_current

    from vllm_ascend.envs import SETTINGS

    assert readme_is_current(Path(__file__).resolve().parents[1] / "README.md", SETTINGS)
