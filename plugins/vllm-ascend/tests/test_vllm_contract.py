"""Every private vLLM name vllm-ascend leans on still exists with the parameters it expects.

A vLLM upgrade that renames or reshapes one fails here, naming it, instead of
crashing an engine (or an NPU start-up nobody here can run) deep in a run.
"""

from __future__ import annotations

from vllm_plugin_kit.contract import KIT, problems, unlisted_overrides

from vllm_ascend.patches import COUPLINGS


def test_private_vllm_names_hold():
    assert problems((*KIT, *COUPLINGS)) == []


def test_every_private_override_is_listed():
    from vllm_ascend.acl_graph import ACLGraphWrapper
    from vllm_ascend.attention import AscendAttentionBackend, AscendAttentionImpl
    from vllm_ascend.communicator import NPUCommunicator
    from vllm_ascend.model_runner import NPUModelRunner
    from vllm_ascend.moe import AscendFusedMoEMethod
    from vllm_ascend.ops import AscendRMSNorm, AscendRotaryEmbedding, AscendSiluAndMul
    from vllm_ascend.platform import EmulatedNPUPlatform, NPUPlatform
    from vllm_ascend.worker import NPUWorker

    classes = (NPUPlatform, EmulatedNPUPlatform, NPUWorker, NPUModelRunner, ACLGraphWrapper,
               AscendAttentionBackend, AscendAttentionImpl, NPUCommunicator,
               AscendFusedMoEMethod, AscendRMSNorm, AscendRotaryEmbedding, AscendSiluAndMul)
    assert unlisted_overrides(classes, (*KIT, *COUPLINGS)) == []
