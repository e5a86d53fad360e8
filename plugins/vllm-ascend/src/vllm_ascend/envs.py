"""Settings of vllm-ascend, from the environment or ``--additional-config '{"ascend": {...}}'``.

``additional_config`` wins when both are given; environment variables are
how settings reach the worker processes vLLM spawns. Unknown keys and bad
values are errors that name the setting.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from vllm_ascend import ENV_EMULATE, PLUGIN

#: Capacity of the emulated NPU's memory (emulation only), e.g. "4GiB".
ENV_MEMORY = "VLLM_ASCEND_DEVICE_MEMORY"
#: Threads per emulated worker; default: the usable cores split across workers.
ENV_THREADS = "VLLM_ASCEND_NUM_THREADS"
ENV_VARS = [ENV_EMULATE, ENV_MEMORY, ENV_THREADS]

DEFAULT_MEMORY = 2 << 30
KEYS = ("device_memory", "num_threads")
_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _bytes(value: Any, setting: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = re.fullmatch(r"\s*([0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{setting}={value!r} is not a memory size; use bytes, MiB or "
                             "GiB, e.g. '4GiB'")
        size = int(match.group(1)) * _UNITS[unit]
    if size <= 0:
        raise ValueError(f"{setting}={value!r} must be a positive memory size")
    return size


@dataclass(frozen=True)
class AscendConfig:
    device_memory: int = DEFAULT_MEMORY
    num_threads: int | None = None

    @classmethod
    def load(cls, additional_config: dict[str, Any] | None = None) -> AscendConfig:
        section = (additional_config or {}).get(PLUGIN) or {}
        if not isinstance(section, dict):
            raise ValueError(f"additional_config.{PLUGIN} must be a mapping, not {section!r}")
        unknown = set(section) - set(KEYS)
        if unknown:
            raise ValueError(f"unknown additional_config.{PLUGIN} keys {sorted(unknown)}; "
                             f"known keys: {', '.join(KEYS)}")
        memory, where = section.get("device_memory"), f"additional_config.{PLUGIN}.device_memory"
        if memory is None:
            memory, where = os.environ.get(ENV_MEMORY, "").strip() or None, ENV_MEMORY
        threads, t_where = section.get("num_threads"), f"additional_config.{PLUGIN}.num_threads"
        if threads is None:
            threads, t_where = os.environ.get(ENV_THREADS, "").strip() or None, ENV_THREADS
        num_threads = None
        if threads is not None:
            try:
                num_threads = int(threads) if not isinstance(threads, bool) else 0
            except ValueError:
                num_threads = 0
            if num_threads <= 0:
                raise ValueError(f"{t_where}={threads!r} must be a positive integer")
        return cls(device_memory=DEFAULT_MEMORY if memory is None else _bytes(memory, where),
                   num_threads=num_threads)
