"""The cpu_sim model runner: vLLM's CPU model runner, which already keeps every
buffer on the host and stubs out device streams and events.

It is its own class so that a backend copied from this one has the place to
put device-specific input preparation, and so the worker never depends on
what vLLM's CPU worker would construct.
"""

from __future__ import annotations

from vllm.v1.worker.cpu_model_runner import CPUModelRunner


class CpuSimModelRunner(CPUModelRunner):
    def warming_up_model(self) -> None:
        # The model runs eagerly on cpu_sim: there is no graph to warm up.
        return None
