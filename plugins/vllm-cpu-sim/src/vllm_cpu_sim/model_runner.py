"""The cpu_sim model runner.

vLLM's CPU model runner already does what the simulated device needs: every
persistent buffer lives on the host, device streams and events are stubbed,
and the model runs eagerly (the platform sets compilation mode NONE, so its
warm-up compiles nothing). The attention metadata comes from this plugin's
backend, and the slot mapping from its kernel override.

It is a class of its own so the worker never depends on what vLLM's CPU worker
would construct, and so that a backend copied from this one has the place for
its device's input preparation.
"""

from __future__ import annotations

from vllm.v1.worker.cpu_model_runner import CPUModelRunner


class CpuSimModelRunner(CPUModelRunner):
    """vLLM's CPU model runner, built by :class:`~vllm_cpu_sim.worker.CpuSimWorker`."""
