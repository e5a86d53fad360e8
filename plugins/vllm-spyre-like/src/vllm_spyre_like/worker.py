"""The worker: one per device, it owns the model runner and the KV cache.

The kit's host worker (:class:`vllm_plugin_kit.worker.HostWorker`) sizes the KV
cache from a fixed simulated capacity, so the number of KV blocks is the same
on every machine. For a real device, ``init_device`` binds the process to its
device and ``determine_available_memory`` measures the device's free memory
after a profiling run (vLLM's GPU ``Worker`` does both; vllm-ascend's
``NPUWorker`` is the worked example). What is this plugin's own: the graphs
compiled per shape before serving, and continuous batching's check that the KV
cache holds a full decode batch.
"""

from __future__ import annotations

import time
from typing import Any

from vllm.v1.kv_cache_interface import KVCacheConfig
from vllm_plugin_kit.worker import HostWorker

from vllm_spyre_like import PLUGIN, get_logger
from vllm_spyre_like.envs import ENV_MEMORY, SETTINGS
from vllm_spyre_like.model_runner import SpyreLikeModelRunner

logger = get_logger(__name__)


class SpyreLikeWorker(HostWorker):
    settings = SETTINGS
    plugin = PLUGIN

    def make_model_runner(self) -> SpyreLikeModelRunner:
        return SpyreLikeModelRunner(self.vllm_config, self.device)

    def initialize_from_config(self, kv_cache_config: KVCacheConfig) -> None:
        self.num_kv_blocks = kv_cache_config.num_blocks
        super().initialize_from_config(kv_cache_config)

    def check_continuous_limits(self) -> None:
        """Continuous batching must hold max_num_seqs sequences of max_model_len
        tokens in the KV cache at once, or its decode batches cannot fill."""
        block_size = self.cache_config.block_size
        max_len = self.model_config.max_model_len
        max_seqs = self.scheduler_config.max_num_seqs
        needed = max_seqs * -(-max_len // block_size)
        available = self.num_kv_blocks - 1  # block 0 is vLLM's null block
        if available < needed:
            raise ValueError(
                f"{PLUGIN} continuous batching: max_num_seqs={max_seqs} sequences of "
                f"max_model_len={max_len} tokens need {needed} KV blocks of {block_size} "
                f"tokens, but the device memory holds {available}; lower --max-num-seqs or "
                f"--max-model-len, or raise {ENV_MEMORY}"
            )

    def compile_or_warm_up_model(self) -> Any:
        """Compile every shape's graph and run it once before the engine serves."""
        if self.model_runner.spyre_config.mode == "continuous":
            self.check_continuous_limits()
        start = time.perf_counter()
        self.model_runner.warm_up_graphs()
        seconds = time.perf_counter() - start
        self.compilation_config.compilation_time += seconds
        logger.info("%s: warmup of %d graphs took %.1f s", PLUGIN,
                    len(self.model_runner.warmup_times), seconds)
        return super().compile_or_warm_up_model()

    def compile_stats(self) -> dict[str, Any]:
        return self.model_runner.compile_stats()
