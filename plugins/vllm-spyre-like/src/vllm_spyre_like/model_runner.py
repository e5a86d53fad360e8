"""The model runner: prepares each step's inputs and runs the model.

vLLM's CPU model runner already fits a CPU stand-in: persistent buffers on
the host, device streams and events stubbed, eager execution. For a real
device, override what differs here (e.g. moving inputs to the device,
synchronising its streams, capturing graphs).
"""

from __future__ import annotations

from vllm.v1.worker.cpu_model_runner import CPUModelRunner


class SpyreLikeModelRunner(CPUModelRunner):
    """vLLM's CPU model runner, built by the worker."""
