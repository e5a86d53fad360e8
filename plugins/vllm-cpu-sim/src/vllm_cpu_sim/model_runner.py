"""The cpu_sim model runner.

vLLM's CPU model runner already does what the simulated device needs: every
persistent buffer lives on the host, device streams and events are stubbed,
and its warm-up compiles the model (vLLM's piecewise compilation with
Inductor, see :mod:`vllm_cpu_sim.passes`) unless it runs eagerly. The attention
metadata comes from this plugin's backend, and the slot mapping from the kit's
kernel override. What it adds: the linear layers' weights are packed for oneDNN
once the model is loaded (:func:`vllm_plugin_kit.linear.pack_model`).
"""

from __future__ import annotations

from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm_plugin_kit import get_logger, linear

from vllm_cpu_sim.envs import SimConfig

logger = get_logger(__name__)


class CpuSimModelRunner(CPUModelRunner):
    """vLLM's CPU model runner, built by :class:`~vllm_cpu_sim.worker.CpuSimWorker`."""

    def load_model(self, load_dummy_weights: bool = False) -> None:
        super().load_model(load_dummy_weights=load_dummy_weights)
        if not SimConfig.load(self.vllm_config.additional_config).packed_linear:
            return
        if self.lora_config is not None:
            # LoRA's wrappers read their base layer's weight directly.
            logger.info("cpu_sim: LoRA enabled; linear layers keep F.linear")
            return
        count = linear.pack_model(self.model, logger)
        logger.info("cpu_sim: %d linear layers packed for oneDNN", count)
