// The NPU implementation of torch.ops._C_ascend.rotary_embedding: checks the
// arguments, then launches the AscendC kernel (kernels/rotary_embedding.cpp)
// on the current NPU stream. Built only where CANN is (see CMakeLists.txt).

#include <torch/library.h>

#include "aclrtlaunch_rotary_embedding_neox.h"
#include "rotary_checks.h"
#include "tiling/platform/platform_ascendc.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"

namespace vllm_ascend {

void rotary_embedding_npu(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                          int64_t head_size, const at::Tensor& cos_sin_cache, bool is_neox) {
    check_rotary_args(positions, query, key, head_size, cos_sin_cache, is_neox);
    const auto dtype = query.scalar_type();
    TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16,
                "_C_ascend.rotary_embedding: the NPU kernel takes float16 or bfloat16");
    const int64_t tokens = positions.size(0);
    if (tokens == 0) {
        return;
    }
    auto* platform = platform_ascendc::PlatformAscendCManager::GetInstance();
    const int64_t cores = static_cast<int64_t>(platform->GetCoreNumAiv());
    const uint32_t block_dim = static_cast<uint32_t>(std::min(tokens, cores));
    aclrtStream stream = c10_npu::getCurrentNPUStream().stream();
    aclrtlaunch_rotary_embedding_neox(
        block_dim, stream, positions.data_ptr(), query.data_ptr(), key.data_ptr(),
        cos_sin_cache.data_ptr(), static_cast<int32_t>(cos_sin_cache.size(1)),
        query.stride(0), key.stride(0), static_cast<int32_t>(head_size),
        static_cast<int32_t>(query.size(1) / head_size),
        static_cast<int32_t>(key.size(1) / head_size), tokens,
        dtype == at::kHalf ? 0 : 1);
}

}  // namespace vllm_ascend

TORCH_LIBRARY_IMPL(_C_ascend, PrivateUse1, m) {
    m.impl("rotary_embedding", &vllm_ascend::rotary_embedding_npu);
}
