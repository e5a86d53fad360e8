"""Settings of the simulated device, read from the environment or ``additional_config``.

Environment variables are the way to reach worker processes that vLLM spawns;
``additional_config`` (``--additional-config '{"cpu_sim": {...}}'``) wins when
both are given.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

#: Selects the platform: "1" forces it on, "0" keeps it off; unset means on
#: unless a real accelerator is visible to torch.
ENV_ENABLE = "VLLM_CPU_SIM"
#: Capacity of the simulated device memory, e.g. "4GiB", "512MiB" or bytes.
ENV_MEMORY = "VLLM_CPU_SIM_DEVICE_MEMORY"
#: Threads per worker; default: the cores this process may use, split across
#: the tensor-parallel workers of this machine.
ENV_THREADS = "VLLM_CPU_SIM_NUM_THREADS"
#: "0" runs linear layers through F.linear instead of oneDNN on packed weights.
ENV_PACKED_LINEAR = "VLLM_CPU_SIM_PACKED_LINEAR"

DEFAULT_MEMORY = 2 << 30
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20,
          "mb": 1000**2, "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30}


def usable_cores() -> int:
    """Cores this process may run on (its affinity), not all the host has."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_bytes(value: str | int | float, setting: str) -> int:
    """Parse a size such as ``4GiB`` or ``512MiB``; errors name the setting."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        size = int(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{setting}={value!r} is not a memory size; "
                "use bytes or a unit such as '512MiB' or '4GiB'"
            )
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{setting}={value!r} must be a positive memory size")
    return size


@dataclass(frozen=True)
class SimConfig:
    device_memory: int = DEFAULT_MEMORY
    num_threads: int | None = None
    packed_linear: bool = True

    @classmethod
    def load(cls, additional_config: dict[str, Any] | None = None) -> SimConfig:
        section = dict((additional_config or {}).get("cpu_sim") or {})
        unknown = set(section) - {"device_memory", "num_threads", "packed_linear"}
        if unknown:
            raise ValueError(
                f"unknown additional_config.cpu_sim keys {sorted(unknown)}; "
                "known keys: device_memory, num_threads, packed_linear"
            )
        memory: Any = section.get("device_memory", os.environ.get(ENV_MEMORY))
        setting = "additional_config.cpu_sim.device_memory" if "device_memory" in section \
            else ENV_MEMORY
        device_memory = DEFAULT_MEMORY if memory in (None, "") else parse_bytes(memory, setting)
        threads: Any = section.get("num_threads", os.environ.get(ENV_THREADS))
        num_threads = None
        if threads not in (None, ""):
            try:
                num_threads = int(threads)
            except ValueError:
                num_threads = 0
            if num_threads <= 0:
                raise ValueError(f"{ENV_THREADS}={threads!r} must be a positive integer")
        packed: Any = section.get("packed_linear", os.environ.get(ENV_PACKED_LINEAR, True))
        setting = "additional_config.cpu_sim.packed_linear" if "packed_linear" in section \
            else ENV_PACKED_LINEAR
        if isinstance(packed, str):
            flag = {"1": True, "true": True, "0": False, "false": False}.get(packed.lower())
            if flag is None:
                raise ValueError(f"{setting}={packed!r} must be 0 or 1")
            packed = flag
        if not isinstance(packed, bool):
            raise ValueError(f"{setting}={packed!r} must be true or false")
        return cls(device_memory=device_memory, num_threads=num_threads,
                   packed_linear=packed)
