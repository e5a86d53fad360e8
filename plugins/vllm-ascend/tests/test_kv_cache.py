"""The NPU's KV cache layout: allocated within the KV budget vLLM sized, and bound
as vLLM binds its own.

vLLM sizes the KV cache to what the device has left (``--gpu-memory-utilization``
of it, less weights and activations), so any memory held beside it while the
cache is allocated is memory the device does not have. The runner's allocation
is measured here by the bytes of the storages it creates that are alive at once.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from vllm.config import AttentionConfig, CacheConfig
from vllm.v1.core.kv_cache_utils import get_kv_cache_config_from_groups
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec

from vllm_ascend.model_runner import NPUModelRunner

LAYERS = [f"model.layers.{i}.self_attn.attn" for i in range(3)]
SPEC = FullAttentionSpec(block_size=128, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
BLOCKS = 6


class LiveStorages(TorchDispatchMode):
    """The storages the ops in the block create (not those of their inputs: views,
    in-place ops), and the most bytes of them alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self._storages: dict[int, tuple[weakref.ref, int]] = {}
        self.peak = 0
        self.outside: list[int] = []  # sizes of those created outside the allocation context
        self.in_context = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        out = func(*args, **(kwargs or {}))
        given = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs))
                 if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            known = self._storages.get(id(storage))
            if id(storage) in given or (known is not None and known[0]() is storage):
                continue
            self._storages[id(storage)] = (weakref.ref(storage), storage.nbytes())
            if not self.in_context:
                self.outside.append(storage.nbytes())
        self.peak = max(self.peak, self.live())
        return out

    def live(self) -> int:
        return sum(size for ref, size in self._storages.values() if ref() is not None)

    @contextmanager
    def allocation_context(self) -> Iterator[None]:
        """Stands for vLLM's KV allocation context (e.g. a memory pool)."""
        self.in_context = True
        try:
            yield
        finally:
            self.in_context = False


def _cache_config() -> CacheConfig:
    config = CacheConfig()
    config.kv_cache_layout = "LBNHC"  # vLLM's first choice for a backend naming none
    return config


def _kv_cache_config() -> KVCacheConfig:
    """vLLM's own KV cache config for three layers and a budget of BLOCKS blocks
    (of the engine's config, what vLLM reads for it)."""
    config = SimpleNamespace(cache_config=_cache_config(), attention_config=AttentionConfig())
    groups = [KVCacheGroupSpec(list(LAYERS), SPEC)]
    return get_kv_cache_config_from_groups(config, groups,  # type: ignore[arg-type]
                                           BLOCKS * len(LAYERS) * SPEC.page_size_bytes)


def _runner() -> Any:
    """An NPU model runner with the state its KV cache allocation reads, no model."""
    runner = object.__new__(NPUModelRunner)
    layers = {name: SimpleNamespace(kv_cache=None) for name in LAYERS}
    for layer in layers.values():
        layer.bind_kv_cache = lambda cache, layer=layer: setattr(layer, "kv_cache", cache)
    runner.__dict__.update(
        device=torch.device("cpu"), cache_config=_cache_config(), kv_caches=[],
        shared_kv_cache_layers={}, attn_groups=[], speculative_config=None,
        model_config=SimpleNamespace(hf_config=SimpleNamespace(model_type="llama")),
        compilation_config=SimpleNamespace(static_forward_context=layers))
    return runner


def test_kv_cache_allocation_stays_within_its_budget() -> None:
    kv_cache_config = _kv_cache_config()
    (budget,) = {tensor.size for tensor in kv_cache_config.kv_cache_tensors}
    runner = _runner()
    with LiveStorages() as seen:
        caches = runner.initialize_kv_cache_tensors(
            kv_cache_config, [SPEC.block_size], seen.allocation_context())
    assert seen.peak <= budget, (
        f"{seen.peak} bytes of KV cache alive at once during the allocation, "
        f"{seen.peak / budget:.1f} times the {budget}-byte budget")
    assert seen.outside == [], "allocated outside vLLM's KV allocation context"
    # the layout, filling the budget
    assert list(caches) == LAYERS
    for name, cache in caches.items():
        assert cache.shape == (2, BLOCKS, 128, 2, 64) and cache.dtype == torch.bfloat16
        assert cache.is_contiguous() and not cache.any()
        assert runner.compilation_config.static_forward_context[name].kv_cache is cache
    assert sum(cache.nbytes for cache in caches.values()) == budget
    assert [c.data_ptr() for c in runner.kv_caches] == [c.data_ptr() for c in caches.values()]


def test_kernel_blocks_smaller_than_the_cache_blocks_are_refused() -> None:
    with pytest.raises(NotImplementedError, match="not kernel blocks of 64"):
        _runner().initialize_kv_cache_tensors(_kv_cache_config(), [64])
