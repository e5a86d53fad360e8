"""Every private vLLM name cpu_sim leans on still exists with the parameters it expects.

A vLLM upgrade that renames or reshapes one fails here, naming it, instead of
crashing an engine deep in a run.
"""

from __future__ import annotations

from vllm_plugin_kit.contract import KIT, problems, unlisted_overrides

from vllm_cpu_sim.patches import COUPLINGS


def test_private_vllm_names_hold():
    assert problems((*KIT, *COUPLINGS)) == []


def test_every_private_override_is_listed():
    from vllm_cpu_sim.attention import CpuSimAttentionBackend, CpuSimAttentionImpl
    from vllm_cpu_sim.model_runner import CpuSimModelRunner
    from vllm_cpu_sim.ops import CpuSimRMSNorm
    from vllm_cpu_sim.passes import CpuSimPassManager
    from vllm_cpu_sim.platform import CpuSimPlatform
    from vllm_cpu_sim.worker import CpuSimWorker

    classes = (CpuSimPlatform, CpuSimWorker, CpuSimModelRunner, CpuSimAttentionBackend,
               CpuSimAttentionImpl, CpuSimRMSNorm, CpuSimPassManager)
    assert unlisted_overrides(classes, (*KIT, *COUPLINGS)) == []
