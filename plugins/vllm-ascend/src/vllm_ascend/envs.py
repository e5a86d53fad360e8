"""Settings of vllm-ascend, as one table (see :mod:`vllm_plugin_kit.settings`).

``--additional-config '{"ascend": {...}}'`` wins over the environment;
environment variables are how settings reach the worker processes vLLM
spawns. Unknown keys and bad values are errors that name the setting. The
README's settings table is generated from :data:`SETTINGS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm_plugin_kit.settings import Setting, SettingsTable, device_settings, parse_flag

from vllm_ascend import ENV_EMULATE, PLUGIN

ENV_MEMORY = "VLLM_ASCEND_DEVICE_MEMORY"
ENV_THREADS = "VLLM_ASCEND_NUM_THREADS"

SETTINGS = SettingsTable(PLUGIN, [
    Setting(None, ENV_EMULATE, parse_flag, None,
            "`1`: emulate the NPU on the CPU; `0`: never active",
            "active where torch_npu sees an NPU"),
    *device_settings("VLLM_ASCEND"),
])


@dataclass(frozen=True)
class AscendConfig:
    """The emulated NPU's memory and threads (unused on an NPU, which measures)."""

    device_memory: int
    num_threads: int | None

    @classmethod
    def load(cls, additional_config: dict[str, Any] | None = None) -> AscendConfig:
        values = SETTINGS.resolve(additional_config)
        return cls(values["device_memory"], values["num_threads"])
