"""Reference implementations of the torch_npu ops this plugin calls, in plain PyTorch:
the index of them (:data:`REFERENCES`), each in ``vllm_ascend.emulated`` by op family.

Each function has the name, argument order, defaults, layouts and return
tuple of the torch_npu op (``torch_npu/_op_plugin_docs.py`` and the meta
registrations in the torch-npu 2.13.0 wheel), and computes what its
documentation says. Arguments the plugin does not use raise
``NotImplementedError`` naming them, so a new use is never silently wrong;
inputs the NPU kernel rejects (wrong layout, out-of-range slots, a wrong
compressed mask) raise ``ValueError`` here too.

Numerics: NPU kernels accumulate in float32 and round once to the input
dtype; so do these. Where a kernel takes only float16/bfloat16 (the fused
attention, npu_dynamic_quant's input, npu_quant_matmul's output), float32 is
accepted only under the one named relaxation, :data:`FLOAT32_RELAXATION`, which
the emulated platform's float32 runs need to equal transformers exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm_ascend.emulated.attention import (
    COMPRESSED_MASK_SIZE,
    PAGED_BLOCK_SIZES,
    npu_fused_infer_attention_score,
    npu_fused_infer_attention_score_get_max_workspace,
    npu_fused_infer_attention_score_out,
    npu_scatter_pa_kv_cache,
)
from vllm_ascend.emulated.moe import (
    npu_grouped_matmul,
    npu_moe_gating_top_k_softmax_v2,
    npu_moe_init_routing_v2,
    npu_moe_token_unpermute,
)
from vllm_ascend.emulated.norm import npu_add_rms_norm, npu_rms_norm, npu_swiglu
from vllm_ascend.emulated.quant import (
    SCALAR_TYPES,
    as_dtype,
    npu_dynamic_quant,
    npu_quant_matmul,
    npu_quantize,
)
from vllm_ascend.emulated.rope import npu_mrope, npu_rotary_mul
from vllm_ascend.emulated.rules import FLOAT32_RELAXATION, kernel_rules, relaxed

__all__ = ["COMPRESSED_MASK_SIZE", "FLOAT32_RELAXATION", "PAGED_BLOCK_SIZES", "REFERENCES",
           "SCALAR_TYPES", "as_dtype", "kernel_rules", "relaxed"]


#: Every op the plugin may call, by its torch_npu name.
REFERENCES: dict[str, Callable[..., Any]] = {
    "npu_rms_norm": npu_rms_norm,
    "npu_add_rms_norm": npu_add_rms_norm,
    "npu_swiglu": npu_swiglu,
    "npu_rotary_mul": npu_rotary_mul,
    "npu_mrope": npu_mrope,
    "npu_scatter_pa_kv_cache": npu_scatter_pa_kv_cache,
    "npu_fused_infer_attention_score": npu_fused_infer_attention_score,
    "npu_fused_infer_attention_score.out": npu_fused_infer_attention_score_out,
    "_npu_fused_infer_attention_score_get_max_workspace":
        npu_fused_infer_attention_score_get_max_workspace,
    "npu_moe_gating_top_k_softmax_v2": npu_moe_gating_top_k_softmax_v2,
    "npu_moe_init_routing_v2": npu_moe_init_routing_v2,
    "npu_grouped_matmul": npu_grouped_matmul,
    "npu_moe_token_unpermute": npu_moe_token_unpermute,
    "npu_quantize": npu_quantize,
    "npu_dynamic_quant": npu_dynamic_quant,
    "npu_quant_matmul": npu_quant_matmul,
}
