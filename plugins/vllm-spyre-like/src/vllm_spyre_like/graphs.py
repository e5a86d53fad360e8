"""The fixed shapes the device runs, and the compiler that builds one graph per shape.

A static-shape device runs only graphs compiled ahead of time. vLLM lays a
step's tokens out flat (all requests' tokens one after the other), and every
layer but attention works token by token, so a graph's shape is the number of
tokens of the step. Each step is padded up to the smallest compiled size that
holds it: prefill steps to a prefill size, decode steps (one token per
request) to a decode size. Attention reads only the real tokens through its
metadata, padded tokens write no KV slot, and only real tokens' logits are
sampled, so padding never changes results.

- static batching, shape (prompt_len P, new_tokens N, batch_size B): a batch's
  prefill is padded to B × P tokens, its decode steps to B;
- continuous batching: one prompt per prefill, padded to a multiple of the
  block size (64), and decode batches padded to a compiled batch size
  (powers of two up to max_num_seqs).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from vllm_spyre_like import PLUGIN, get_logger
from vllm_spyre_like.envs import BACKENDS, SpyreLikeConfig, WarmupShape

logger = get_logger(__name__)


class GraphSizes(NamedTuple):
    """Token counts of the graphs compiled at warmup."""

    prefill: tuple[int, ...]
    decode: tuple[int, ...]

    def all(self) -> list[int]:
        return sorted(set(self.prefill) | set(self.decode))

    def padded(self, num_tokens: int, decode: bool) -> int | None:
        """The smallest compiled size holding ``num_tokens``; None if none does."""
        sizes = self.decode if decode else self.prefill
        i = bisect.bisect_left(sizes, num_tokens)
        return sizes[i] if i < len(sizes) else None


def static_sizes(shapes: Sequence[WarmupShape]) -> GraphSizes:
    return GraphSizes(
        prefill=tuple(sorted({s.prompt_len * s.batch_size for s in shapes})),
        decode=tuple(sorted({s.batch_size for s in shapes})),
    )


def decode_batch_sizes(max_num_seqs: int) -> tuple[int, ...]:
    """Powers of two below max_num_seqs, and max_num_seqs itself."""
    sizes = {max_num_seqs}
    size = 1
    while size < max_num_seqs:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def continuous_sizes(max_model_len: int, max_num_seqs: int, block_size: int) -> GraphSizes:
    return GraphSizes(
        prefill=tuple(range(block_size, max_model_len + 1, block_size)),
        decode=decode_batch_sizes(max_num_seqs),
    )


class CountingCompiler:
    """A torch.compile backend that counts and logs every graph it compiles.

    After warmup the count must not grow: a new graph while serving is a
    shape the device was not compiled for.
    """

    def __init__(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown compile backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.compilations = 0
        self.last_tokens: int | None = None

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        self.compilations += 1
        logger.debug("%s: compiling graph %d (%s) for %s tokens", PLUGIN, self.compilations,
                     self.backend, self.last_tokens)
        if self.backend == "eager":
            return gm.forward
        return torch._dynamo.lookup_backend(self.backend)(gm, example_inputs)


def compile_model(model: torch.nn.Module, compiler: CountingCompiler, num_graphs: int) -> None:
    """Compile ``model`` in place, static shapes only (a new shape is a new graph)."""
    # Dynamo keeps at most recompile_limit graphs per frame, then runs eagerly;
    # every warmup shape needs its own, with room for the unplanned.
    torch._dynamo.config.recompile_limit = max(
        torch._dynamo.config.recompile_limit, 2 * num_graphs + 8)
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, 4 * num_graphs + 16)
    model.compile(fullgraph=True, dynamic=False, backend=compiler)


def warm_up(run: Callable[[int], Any], sizes: GraphSizes, compiler: CountingCompiler | None
            ) -> dict[int, float]:
    """Compile and run every graph once; log and return seconds per size."""
    times: dict[int, float] = {}
    for num_tokens in sizes.all():
        kinds = [k for k, s in (("prefill", sizes.prefill), ("decode", sizes.decode))
                 if num_tokens in s]
        if compiler is not None:
            compiler.last_tokens = num_tokens
        start = time.perf_counter()
        run(num_tokens)
        times[num_tokens] = time.perf_counter() - start
        logger.info("%s: warmup %s graph for %d tokens: %.2f s (%s)", PLUGIN,
                    "/".join(kinds), num_tokens, times[num_tokens],
                    compiler.backend if compiler is not None else "eager, not compiled")
    return times


def graph_sizes(vllm_config: Any, config: SpyreLikeConfig) -> GraphSizes:
    """The compiled sizes of this configuration (see the module docstring)."""
    scheduler_config = vllm_config.scheduler_config
    if config.mode == "continuous":
        sizes = continuous_sizes(vllm_config.model_config.max_model_len,
                                 scheduler_config.max_num_seqs,
                                 vllm_config.cache_config.block_size)
    else:
        sizes = static_sizes(config.warmup_shapes)
    return within_budget(sizes, scheduler_config.max_num_batched_tokens)


def within_budget(sizes: GraphSizes, max_num_batched_tokens: int) -> GraphSizes:
    """No step holds more tokens than the scheduler's budget: larger prefill sizes
    give way to the budget itself (prefills are chunked to it)."""
    prefill = [s for s in sizes.prefill if s <= max_num_batched_tokens]
    if len(prefill) < len(sizes.prefill):
        prefill.append(max_num_batched_tokens)
    decode = [s for s in sizes.decode if s <= max_num_batched_tokens]
    return GraphSizes(tuple(prefill), tuple(decode))
