"""The entry point and when the platform activates, each in a fresh process."""

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


def _platform(**env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("VLLM_CPU_SIM", "VLLM_PLUGINS")}
    full.update(env)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env=full, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_entry_point_is_declared():
    (ep,) = [e for e in entry_points(group="vllm.platform_plugins") if e.name == "cpu_sim"]
    assert ep.value == "vllm_cpu_sim:register"
    assert ep.load()() in (None, "vllm_cpu_sim.platform.CpuSimPlatform")


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "vllm_cpu_sim.platform.CpuSimPlatform"),  # no accelerator here: on by default
    ({"VLLM_CPU_SIM": "1"}, "vllm_cpu_sim.platform.CpuSimPlatform"),
    ({"VLLM_CPU_SIM": "0"}, "vllm.platforms.interface.UnspecifiedPlatform"),
    ({"VLLM_PLUGINS": "cpu_sim"}, "vllm_cpu_sim.platform.CpuSimPlatform"),
    ({"VLLM_PLUGINS": "some_other_plugin"}, "vllm.platforms.interface.UnspecifiedPlatform"),
])
def test_activation(env, expected):
    assert _platform(**env) == expected


def test_platform_shape():
    from vllm.platforms.interface import PlatformEnum

    from vllm_cpu_sim.platform import CpuSimPlatform

    platform = CpuSimPlatform()
    assert platform.is_out_of_tree() and not platform.is_cpu()
    assert CpuSimPlatform._enum is PlatformEnum.OOT
    assert CpuSimPlatform.dist_backend == "gloo"
    assert CpuSimPlatform.get_device_communicator_cls().endswith("GlooCommunicator")
    assert "VLLM_CPU_SIM_DEVICE_MEMORY" in CpuSimPlatform.additional_env_vars


def test_vllm_cleanup_works_in_the_users_process():
    """vLLM's cleanup between engines touches torch.accelerator, which raises on a
    machine without one unless the active platform's patch is in place."""
    code = ("from vllm.distributed import cleanup_dist_env_and_memory\n"
            "cleanup_dist_env_and_memory()\nprint('cleaned up')\n")
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_SIM"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(env, VLLM_PLUGINS="cpu_sim"), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("cleaned up")
