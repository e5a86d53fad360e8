// The schemas of vllm-ascend's own kernels: torch.ops._C_ascend.*.
//
// Built into every library of ours: the NPU one (with the AscendC kernels, where
// CANN is) and the CPU one of the emulation, so Python finds the same op either way.

#include <torch/library.h>

TORCH_LIBRARY(_C_ascend, m) {
    // NeoX rotary embedding of query [tokens, heads * head_size] and key
    // [tokens, kv_heads * head_size], in place, by each token's row of
    // cos_sin_cache [max_positions, rot_dim] (cos, then sin).
    m.def("rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!) key, "
          "int head_size, Tensor cos_sin_cache, bool is_neox) -> ()");
}
