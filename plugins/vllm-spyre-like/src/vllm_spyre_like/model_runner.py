"""The model runner: pads every step to a compiled shape and runs its graph.

vLLM's CPU model runner already fits a CPU stand-in (persistent buffers on
the host, device streams stubbed). On top of it, this runner compiles the
model once per shape at warmup (graphs.py) and pads each step's flat token
batch up to the smallest compiled size. vLLM's own padding path does the
rest, as it does for CUDA graphs: padded tokens get KV slot -1 and no logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from vllm.config import VllmConfig
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm_plugin_kit import linear

from vllm_spyre_like import PLUGIN, get_logger
from vllm_spyre_like.envs import SpyreLikeConfig
from vllm_spyre_like.graphs import CountingCompiler, compile_model, graph_sizes, warm_up

logger = get_logger(__name__)


class SpyreLikeModelRunner(CPUModelRunner):
    def __init__(self, vllm_config: VllmConfig, device: torch.device) -> None:
        super().__init__(vllm_config, device)
        self.spyre_config = SpyreLikeConfig.of(vllm_config)
        self.graph_sizes = graph_sizes(vllm_config, self.spyre_config)
        #: None with --enforce-eager: steps are padded but run eagerly
        self.compiler = None if vllm_config.model_config.enforce_eager else \
            CountingCompiler(self.spyre_config.compile_backend)
        #: seconds of each size's first run (compile + run) at warmup
        self.warmup_times: dict[int, float] = {}
        #: steps that no compiled size held (each may compile a new graph)
        self.unplanned_steps = 0
        self._forced_tokens: int | None = None

    def load_model(self, load_dummy_weights: bool = False) -> None:
        super().load_model(load_dummy_weights)
        # before compiling, so that the graphs trace the layers' new method
        widened = linear.widen_bf16_products(self.model)
        if widened:
            logger.info("%s: no native bfloat16 GEMM on this host; %d bfloat16 linear layers "
                        "multiply %d rows or more in float32, rounded back once", PLUGIN,
                        widened, linear.MIN_ROWS)
        if self.compiler is not None:
            compile_model(self.model, self.compiler, len(self.graph_sizes.all()))

    def _determine_batch_execution_and_padding(
        self, num_tokens: int, num_reqs: int, num_scheduled_tokens_np: Any,
        max_num_scheduled_tokens: int, *args: Any, **kwargs: Any,
    ) -> tuple[Any, ...]:
        mode, descriptor, *rest = super()._determine_batch_execution_and_padding(
            num_tokens, num_reqs, num_scheduled_tokens_np, max_num_scheduled_tokens,
            *args, **kwargs)
        padded = self._forced_tokens or self.graph_sizes.padded(
            num_tokens, decode=max_num_scheduled_tokens == 1)
        if padded is None:
            self.unplanned_steps += 1
            logger.warning(
                "%s: a step of %d tokens (%d requests) fits no compiled size %s; it runs "
                "at its own size, which compiles a new graph", PLUGIN, num_tokens, num_reqs,
                self.graph_sizes.all())
            padded = num_tokens
        return (mode, dataclasses.replace(descriptor, num_tokens=padded), *rest)

    def warm_up_graphs(self) -> dict[int, float]:
        """Compile and run every graph once, before serving (with --enforce-eager
        there is nothing to compile, and nothing is run)."""
        if self.compiler is None:
            logger.info("%s: --enforce-eager: no graphs compiled; steps padded to %s tokens",
                        PLUGIN, self.graph_sizes.all())
            return {}

        def run(num_tokens: int) -> None:
            self._forced_tokens = num_tokens
            try:
                self._dummy_run(num_tokens)
            finally:
                self._forced_tokens = None

        self.warmup_times = warm_up(run, self.graph_sizes, self.compiler)
        return self.warmup_times

    def compile_stats(self) -> dict[str, Any]:
        """What the tests and benchmarks read: graphs compiled and warmup times."""
        return {
            "backend": self.compiler.backend if self.compiler else None,
            "compilations": self.compiler.compilations if self.compiler else 0,
            "prefill_sizes": list(self.graph_sizes.prefill),
            "decode_sizes": list(self.graph_sizes.decode),
            "warmup_seconds": dict(self.warmup_times),
            "unplanned_steps": self.unplanned_steps,
            "threads": torch.get_num_threads(),
        }
