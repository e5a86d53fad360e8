"""Attention of the static-shape device: the kit's paged attention under this plugin's name.

vLLM hands the backend a paged KV cache: fixed-size blocks, and per request a
row of the block table naming its blocks in order. K and V of the scheduled
tokens are written through ``slot_mapping``; padding tokens (a step padded to
a compiled size) have slot -1, write nothing, and get zeros as output. See
:mod:`vllm_plugin_kit.attention` for the rest.

This is the place for your device's attention kernel: keep the metadata
builder (it turns vLLM's batch description into what a kernel needs) and
replace ``do_kv_cache_update`` and ``forward``.
"""

from __future__ import annotations

from vllm.v1.attention.backends.registry import register_backend
from vllm_plugin_kit.attention import HostAttentionBackend, HostAttentionImpl

from vllm_spyre_like import PLUGIN

NAME = "SPYRE_LIKE_ATTN"


class SpyreLikeAttentionImpl(HostAttentionImpl):
    OWNER = PLUGIN


@register_backend(NAME)
class SpyreLikeAttentionBackend(HostAttentionBackend):
    NAME = NAME
    IMPL = SpyreLikeAttentionImpl
