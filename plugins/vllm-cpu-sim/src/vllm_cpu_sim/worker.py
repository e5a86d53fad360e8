"""The cpu_sim worker: the kit's host worker with cpu_sim's layers and model runner.

The simulated device has a fixed memory capacity; the KV cache gets what it
leaves after the weights and an activation reserve computed from the
configuration (:class:`vllm_plugin_kit.worker.HostWorker`), so the number of
KV blocks depends only on the settings and the model.
"""

from __future__ import annotations

from vllm_plugin_kit.worker import HostWorker

from vllm_cpu_sim import ops
from vllm_cpu_sim.envs import SETTINGS
from vllm_cpu_sim.model_runner import CpuSimModelRunner


class CpuSimWorker(HostWorker):
    settings = SETTINGS
    plugin = "cpu_sim"

    def register_custom_ops(self) -> None:
        ops.register()

    def make_model_runner(self) -> CpuSimModelRunner:
        return CpuSimModelRunner(self.vllm_config, self.device)
