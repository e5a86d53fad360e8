"""cpu_sim's attention: the kit's paged attention in plain PyTorch, under its own name.

vLLM looks backends up by name in its registry; a dynamic entry is how an
out-of-tree backend gets one. See :mod:`vllm_plugin_kit.attention` for how it
works (decodes as one batched product, the rest as one masked SDPA, index
tensors built once per step).
"""

from __future__ import annotations

from vllm.v1.attention.backends.registry import register_backend
from vllm_plugin_kit.attention import HostAttentionBackend, HostAttentionImpl


class CpuSimAttentionImpl(HostAttentionImpl):
    OWNER = "cpu_sim"


@register_backend("CPU_SIM_ATTN")
class CpuSimAttentionBackend(HostAttentionBackend):
    NAME = "CPU_SIM_ATTN"
    IMPL = CpuSimAttentionImpl
