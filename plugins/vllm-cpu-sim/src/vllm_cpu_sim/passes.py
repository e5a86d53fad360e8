"""The Inductor pass manager of the compiled model (vLLM's VLLM_COMPILE mode).

vLLM's pass manager ends with a pass that turns its compiled ``_C`` kernels
(rotary embedding, RMSNorm, SiLU-and-mul) back into in-place calls; it looks
those kernels up, and the empty build of vLLM has none, so it fails. This
model has none of them in its graphs either, so there is nothing to undo:
every other pass runs as vLLM configures it.
"""

from __future__ import annotations

import torch
from vllm.compilation.passes.pass_manager import PostGradPassManager
from vllm.compilation.passes.vllm_inductor_pass import VllmInductorPass
from vllm.config import VllmConfig


class NoDefunctionalization(VllmInductorPass):
    """Stands in for vLLM's FixFunctionalizationPass: no ``_C`` kernel to restore."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        return None


class CpuSimPassManager(PostGradPassManager):
    """vLLM's post-grad passes, minus the ``_C`` de-functionalization."""

    def configure(self, config: VllmConfig) -> None:
        super().configure(config)
        self.fix_functionalization = NoDefunctionalization(config)
