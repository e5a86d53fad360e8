// Argument checks shared by every implementation of _C_ascend::rotary_embedding,
// so the NPU kernel and the CPU emulation refuse the same inputs with the same words.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace vllm_ascend {

inline void check_rotary_args(const at::Tensor& positions, const at::Tensor& query,
                              const at::Tensor& key, int64_t head_size,
                              const at::Tensor& cos_sin_cache, bool is_neox) {
    TORCH_CHECK(is_neox, "_C_ascend.rotary_embedding: only the NeoX (half) layout is built; "
                "use npu_mrope for GPT-J interleaving");
    TORCH_CHECK(positions.dim() == 1 && positions.scalar_type() == at::kLong,
                "_C_ascend.rotary_embedding: positions must be 1-D int64");
    TORCH_CHECK(query.dim() == 2 && key.dim() == 2 && query.size(0) == positions.size(0) &&
                key.size(0) == positions.size(0),
                "_C_ascend.rotary_embedding: query and key must be [tokens, heads * head_size]");
    TORCH_CHECK(query.stride(1) == 1 && key.stride(1) == 1,
                "_C_ascend.rotary_embedding: query and key rows must be contiguous");
    TORCH_CHECK(query.scalar_type() == key.scalar_type() &&
                query.scalar_type() == cos_sin_cache.scalar_type(),
                "_C_ascend.rotary_embedding: query, key and cos_sin_cache must share a dtype");
    TORCH_CHECK(cos_sin_cache.dim() == 2 && cos_sin_cache.is_contiguous(),
                "_C_ascend.rotary_embedding: cos_sin_cache must be a contiguous "
                "[max_positions, rot_dim]");
    const int64_t rot_dim = cos_sin_cache.size(1);
    TORCH_CHECK(rot_dim % 32 == 0 && rot_dim <= head_size,
                "_C_ascend.rotary_embedding: rot_dim ", rot_dim,
                " must be a multiple of 32 and at most head_size ", head_size);
    TORCH_CHECK(query.size(1) % head_size == 0 && key.size(1) % head_size == 0,
                "_C_ascend.rotary_embedding: query and key widths must be whole heads");
}

}  // namespace vllm_ascend
