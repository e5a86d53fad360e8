"""The settings of cpu_sim, as one table (see :mod:`vllm_plugin_kit.settings`).

Environment variables reach the worker processes vLLM spawns;
``--additional-config '{"cpu_sim": {...}}'`` wins when both are given. The
README's settings table is generated from :data:`SETTINGS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm_plugin_kit.settings import Setting, SettingsTable, device_settings, parse_flag

#: Selects the platform: "1" forces it on, "0" keeps it off; unset means on
#: unless a real accelerator is visible to torch.
ENV_ENABLE = "VLLM_CPU_SIM"
ENV_MEMORY = "VLLM_CPU_SIM_DEVICE_MEMORY"
ENV_THREADS = "VLLM_CPU_SIM_NUM_THREADS"
ENV_PACKED_LINEAR = "VLLM_CPU_SIM_PACKED_LINEAR"

SETTINGS = SettingsTable("cpu_sim", [
    Setting(None, ENV_ENABLE, parse_flag, None,
            "`1`: active even where a GPU is visible; `0`: never active",
            "active unless torch sees a CUDA or XPU device"),
    *device_settings(ENV_ENABLE),
    Setting("packed_linear", ENV_PACKED_LINEAR, parse_flag, True,
            "`0` runs linear layers through `F.linear` instead of oneDNN on packed weights",
            "`1` / `true`"),
])


@dataclass(frozen=True)
class SimConfig:
    device_memory: int
    num_threads: int | None
    packed_linear: bool

    @classmethod
    def load(cls, additional_config: dict[str, Any] | None = None) -> SimConfig:
        values = SETTINGS.resolve(additional_config)
        return cls(values["device_memory"], values["num_threads"], values["packed_linear"])
