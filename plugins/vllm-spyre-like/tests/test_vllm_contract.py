"""Every private vLLM name spyre_like leans on still exists with the parameters it expects.

A vLLM upgrade that renames or reshapes one fails here, naming it, instead of
crashing an engine deep in a run.
"""

from __future__ import annotations


def test_private_vllm_names_hold():
    from vllm_plugin_kit.contract import KIT, problems

    from vllm_spyre_like.patches import COUPLINGS

    assert problems((*KIT, *COUPLINGS)) == []


def test_every_private_override_is_listed():
    from vllm_plugin_kit.contract import KIT, unlisted_overrides

    from vllm_spyre_like.attention import SpyreLikeAttentionBackend, SpyreLikeAttentionImpl
    from vllm_spyre_like.model_runner import SpyreLikeModelRunner
    from vllm_spyre_like.patches import COUPLINGS
    from vllm_spyre_like.platform import SpyreLikePlatform
    from vllm_spyre_like.scheduler import ContinuousBatchingScheduler, StaticBatchingScheduler
    from vllm_spyre_like.worker import SpyreLikeWorker

    classes = (SpyreLikePlatform, SpyreLikeWorker, SpyreLikeModelRunner,
               SpyreLikeAttentionBackend, SpyreLikeAttentionImpl, StaticBatchingScheduler,
               ContinuousBatchingScheduler)
    assert unlisted_overrides(classes, (*KIT, *COUPLINGS)) == []
