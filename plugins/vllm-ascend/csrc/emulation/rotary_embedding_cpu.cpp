// The CPU implementation of torch.ops._C_ascend.rotary_embedding, for NPU
// emulation: the kernel's arithmetic (float32, one rounding to the input dtype)
// over host tensors, with the same argument checks. It lets the plugin's
// choice between its own kernel and torch_npu's built-in run where no NPU is;
// the AscendC kernel itself is checked against the same references on an NPU.

#include <torch/library.h>

#include "../rotary_checks.h"

namespace vllm_ascend {

namespace {

template <typename T>
void rotate_rows(const int64_t* positions, T* data, int64_t tokens, int64_t stride,
                 int64_t heads, int64_t head_size, const T* cos_sin, int64_t rot_dim) {
    const int64_t half = rot_dim / 2;
    for (int64_t t = 0; t < tokens; ++t) {
        const T* row = cos_sin + positions[t] * rot_dim;
        for (int64_t h = 0; h < heads; ++h) {
            T* x = data + t * stride + h * head_size;
            for (int64_t i = 0; i < half; ++i) {
                const float c = static_cast<float>(row[i]);
                const float s = static_cast<float>(row[half + i]);
                const float x1 = static_cast<float>(x[i]);
                const float x2 = static_cast<float>(x[half + i]);
                x[i] = static_cast<T>(x1 * c - x2 * s);
                x[half + i] = static_cast<T>(x2 * c + x1 * s);
            }
        }
    }
}

}  // namespace

void rotary_embedding_cpu(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                          int64_t head_size, const at::Tensor& cos_sin_cache, bool is_neox) {
    check_rotary_args(positions, query, key, head_size, cos_sin_cache, is_neox);
    const int64_t max_position = cos_sin_cache.size(0);
    const auto pos = positions.contiguous();
    if (pos.numel() > 0) {
        TORCH_CHECK(pos.min().item<int64_t>() >= 0 && pos.max().item<int64_t>() < max_position,
                    "_C_ascend.rotary_embedding: a position is outside cos_sin_cache's ",
                    max_position, " rows");
    }
    const int64_t rot_dim = cos_sin_cache.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, query.scalar_type(), "rotary_embedding_cpu", [&] {
            rotate_rows<scalar_t>(pos.data_ptr<int64_t>(), query.data_ptr<scalar_t>(),
                                  query.size(0), query.stride(0), query.size(1) / head_size,
                                  head_size, cos_sin_cache.data_ptr<scalar_t>(), rot_dim);
            rotate_rows<scalar_t>(pos.data_ptr<int64_t>(), key.data_ptr<scalar_t>(),
                                  key.size(0), key.stride(0), key.size(1) / head_size,
                                  head_size, cos_sin_cache.data_ptr<scalar_t>(), rot_dim);
        });
}

}  // namespace vllm_ascend

TORCH_LIBRARY_IMPL(_C_ascend, CPU, m) {
    m.impl("rotary_embedding", &vllm_ascend::rotary_embedding_cpu);
}
