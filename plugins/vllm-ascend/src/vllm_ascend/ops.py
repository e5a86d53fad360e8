"""vLLM's hot layers on NPU kernels, registered with ``CustomOp.register_oot``
(the MoE layer's method is in :mod:`vllm_ascend.moe`).

vLLM instantiates these in place of its own classes on an out-of-tree
platform. Each calls its torch_npu kernel through :mod:`vllm_ascend.npu_ops`
and falls back to vLLM's PyTorch form only where the kernel's documented
constraints do not hold (said at each fallback).
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
    UnquantizedFusedMoEMethod,
)
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.rotary_embedding import (
    DynamicNTKAlphaRotaryEmbedding,
    DynamicNTKScalingRotaryEmbedding,
    Gemma4RotaryEmbedding,
    LinearScalingRotaryEmbedding,
    Llama3RotaryEmbedding,
    NTKScalingRotaryEmbedding,
    YaRNScalingRotaryEmbedding,
)
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

from vllm_ascend import native, npu_ops
from vllm_ascend.moe import AscendFusedMoEMethod


class AscendRMSNorm(RMSNorm):
    """``npu_rms_norm``; with a residual, ``npu_add_rms_norm``, whose third output
    (input + residual) is the new residual."""

    def forward_oot(self, x: torch.Tensor, residual: torch.Tensor | None = None
                    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.variance_size_override is not None or not self.has_weight:
            # the kernels normalise over the whole gamma: partial or weightless
            # norms take vLLM's form
            return self.forward_native(x, residual)
        weight = self.weight.data
        if residual is None:
            return npu_ops.npu_rms_norm(x, weight, self.variance_epsilon)[0]
        out, _, new_residual = npu_ops.npu_add_rms_norm(x, residual, weight,
                                                        self.variance_epsilon)
        return out, new_residual


class AscendSiluAndMul(SiluAndMul):
    """``npu_swiglu``: silu of the first half times the second half."""

    def forward_oot(self, x: torch.Tensor) -> torch.Tensor:
        return npu_ops.npu_swiglu(x, dim=-1)


class AscendRotaryEmbedding(RotaryEmbedding):
    """vllm-ascend's own fused kernel (``_C_ascend.rotary_embedding``, NeoX
    pairing, in place) where this install built it; otherwise torch_npu's
    ``npu_mrope`` in RoPE mode (1-D positions), NeoX ('half') or GPT-J
    ('interleave') pairing. Partial rotary dims pass through either way.

    The plugin's kernel rotates query and key in place, so they stay what they
    came as, strided views of the QKV projection; ``npu_mrope`` returns new
    contiguous ones. The fused attention kernel takes a contiguous query only,
    so the attention layer copies the query where it is not: after this
    kernel, not after ``npu_mrope``."""

    def forward_oot(self, positions: torch.Tensor, query: torch.Tensor,
                    key: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # both kernels read whole 32-byte blocks of each half: rotary_dim must
        # be a multiple of 32 (16 for float32)
        multiple = 16 if query.dtype == torch.float32 else 32
        if key is None or self.rotary_dim % multiple:
            return self.forward_native(positions, query, key)
        tokens = positions.numel()
        cache = self._match_cos_sin_cache_dtype(query)
        if self.is_neox_style and self.rotary_dim % 32 == 0 and native.available():
            q, k = query.view(tokens, -1), key.view(tokens, -1)
            native.rotary_embedding(positions.flatten(), q, k, self.head_size, cache, True)
            return query, key
        new_query, new_key = npu_ops.npu_mrope(
            positions.flatten(), query.reshape(tokens, -1), key.reshape(tokens, -1), cache,
            self.head_size, rotary_mode="half" if self.is_neox_style else "interleave")
        return new_query.view(query.shape), new_key.view(key.shape)


#: vLLM's subclasses of ``RotaryEmbedding`` whose forward is the base class's
#: rotation: they differ only in how the cos/sin cache is computed (Llama 3's
#: frequency bands, YaRN's ramp and magnitude scale, linear, NTK and dynamic
#: NTK scaling, Gemma 4's proportional frequencies, zero (no rotation) past its
#: rotary part).
#: vLLM's CustomOp looks an out-of-tree class up by the name of the class being
#: built, so registering ``RotaryEmbedding`` alone leaves these on vLLM's
#: PyTorch path: each gets a class of its own, its cache and the NPU forward.
#:
#: Left on vLLM's own forward, because their forward is not that rotation:
#: ``FourierRotaryEmbedding`` (a cache per KV head, computed from learned
#: coefficients in its first forward), and the rotary classes that do not
#: derive from ``RotaryEmbedding``: ``MRotaryEmbedding`` and its subclasses
#: (three rows of positions, by section), ``DeepseekScalingRotaryEmbedding``
#: (MLA models, which vllm-ascend's attention does not serve),
#: ``Llama4VisionRotaryEmbedding`` (a complex rotation of image patches),
#: ``DualChunkRotaryEmbedding`` (several query caches per chunk) and
#: ``Phi3LongRoPEScaledRotaryEmbedding`` (a plain module, not a custom op,
#: choosing a short or a long cache).
ROTARY_CACHE_VARIANTS: tuple[type[RotaryEmbedding], ...] = (
    Llama3RotaryEmbedding, YaRNScalingRotaryEmbedding, LinearScalingRotaryEmbedding,
    NTKScalingRotaryEmbedding, DynamicNTKScalingRotaryEmbedding,
    DynamicNTKAlphaRotaryEmbedding, Gemma4RotaryEmbedding)


def _on_npu(variant: type[RotaryEmbedding]) -> type[RotaryEmbedding]:
    """``variant`` with :class:`AscendRotaryEmbedding`'s forward: its own
    ``__init__`` and cache, the NPU kernels for the rotation."""
    return type(f"Ascend{variant.__name__}", (AscendRotaryEmbedding, variant),
                {"__module__": __name__,
                 "__doc__": f"vLLM's {variant.__name__} on AscendRotaryEmbedding's kernels."})


LAYERS: dict[str, tuple[type, type]] = {
    "RMSNorm": (RMSNorm, AscendRMSNorm), "SiluAndMul": (SiluAndMul, AscendSiluAndMul),
    "RotaryEmbedding": (RotaryEmbedding, AscendRotaryEmbedding),
    **{variant.__name__: (variant, _on_npu(variant)) for variant in ROTARY_CACHE_VARIANTS},
    "UnquantizedFusedMoEMethod": (UnquantizedFusedMoEMethod, AscendFusedMoEMethod)}


def register() -> None:
    """Put the NPU layers in vLLM's out-of-tree registry; call before the model
    is built, in every process that builds one (idempotent)."""
    from vllm.model_executor.custom_op import op_registry_oot

    for name, (base, layer) in LAYERS.items():
        if name not in op_registry_oot:
            base.register_oot(layer, name=name)
