// Fused NeoX rotary embedding for query and key, in place, on the NPU's vector cores.
//
// One launch rotates every head of every token's query and key: each core takes
// a contiguous range of tokens, loads the token's cos/sin row once (by its
// position) and reuses it for all query and key heads. The rotation runs in
// float32 and rounds once to the input dtype, as vLLM's reference does:
//
//   x1 = x[:half], x2 = x[half:rot]
//   x[:half]    = x1 * cos - x2 * sin
//   x[half:rot] = x2 * cos + x1 * sin
//
// Dims past rot_dim pass through untouched. Constraints (checked by the torch
// binding): rot_dim is a multiple of 32 (so each half is whole 32-byte blocks
// of 16-bit values), query and key rows are contiguous per head.

#include "kernel_operator.h"

using namespace AscendC;

namespace vllm_ascend {

constexpr int32_t BUFFER_NUM = 1;

template <typename T>
class RotaryEmbeddingNeox {
public:
    __aicore__ inline RotaryEmbeddingNeox() {}

    __aicore__ inline void Init(GM_ADDR positions, GM_ADDR query, GM_ADDR key, GM_ADDR cosSin,
                                int32_t rotDim, int64_t queryStride, int64_t keyStride,
                                int32_t headSize, int32_t numHeads, int32_t numKvHeads,
                                int64_t numTokens)
    {
        rotDim_ = rotDim;
        half_ = rotDim / 2;
        queryStride_ = queryStride;
        keyStride_ = keyStride;
        headSize_ = headSize;
        numHeads_ = numHeads;
        numKvHeads_ = numKvHeads;

        // an even share of the tokens per core; the last cores may get one fewer
        int64_t cores = GetBlockNum();
        int64_t core = GetBlockIdx();
        int64_t base = numTokens / cores;
        int64_t extra = numTokens % cores;
        firstToken_ = core * base + (core < extra ? core : extra);
        tokenCount_ = base + (core < extra ? 1 : 0);

        positions_.SetGlobalBuffer(reinterpret_cast<__gm__ int64_t*>(positions), numTokens);
        query_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(query), numTokens * queryStride);
        key_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(key), numTokens * keyStride);
        cosSin_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(cosSin));

        pipe_.InitBuffer(inQueue_, BUFFER_NUM, rotDim * sizeof(T));
        pipe_.InitBuffer(outQueue_, BUFFER_NUM, rotDim * sizeof(T));
        pipe_.InitBuffer(cosSinBuf_, rotDim * sizeof(T));
        pipe_.InitBuffer(cosF_, half_ * sizeof(float));
        pipe_.InitBuffer(sinF_, half_ * sizeof(float));
        pipe_.InitBuffer(xF_, rotDim * sizeof(float));
        pipe_.InitBuffer(yF_, rotDim * sizeof(float));
        pipe_.InitBuffer(tmpF_, half_ * sizeof(float));
    }

    __aicore__ inline void Process()
    {
        for (int64_t t = 0; t < tokenCount_; ++t) {
            int64_t token = firstToken_ + t;
            LoadCosSin(positions_.GetValue(token));
            for (int32_t h = 0; h < numHeads_; ++h) {
                RotateHead(query_, token * queryStride_ + h * headSize_);
            }
            for (int32_t h = 0; h < numKvHeads_; ++h) {
                RotateHead(key_, token * keyStride_ + h * headSize_);
            }
        }
    }

private:
    // cos in the first half of the cache row, sin in the second, both as float32
    __aicore__ inline void LoadCosSin(int64_t position)
    {
        LocalTensor<T> row = cosSinBuf_.Get<T>();
        DataCopy(row, cosSin_[position * rotDim_], rotDim_);
        PipeBarrier<PIPE_ALL>();
        LocalTensor<float> cosF = cosF_.Get<float>();
        LocalTensor<float> sinF = sinF_.Get<float>();
        Cast(cosF, row, RoundMode::CAST_NONE, half_);
        Cast(sinF, row[half_], RoundMode::CAST_NONE, half_);
        PipeBarrier<PIPE_V>();
    }

    __aicore__ inline void RotateHead(GlobalTensor<T>& tensor, int64_t offset)
    {
        LocalTensor<T> in = inQueue_.AllocTensor<T>();
        DataCopy(in, tensor[offset], rotDim_);
        inQueue_.EnQue(in);
        in = inQueue_.DeQue<T>();

        LocalTensor<float> x = xF_.Get<float>();
        LocalTensor<float> y = yF_.Get<float>();
        LocalTensor<float> tmp = tmpF_.Get<float>();
        LocalTensor<float> cosF = cosF_.Get<float>();
        LocalTensor<float> sinF = sinF_.Get<float>();
        Cast(x, in, RoundMode::CAST_NONE, rotDim_);
        inQueue_.FreeTensor(in);
        PipeBarrier<PIPE_V>();

        // y1 = x1 * cos - x2 * sin
        Mul(y, x, cosF, half_);
        Mul(tmp, x[half_], sinF, half_);
        PipeBarrier<PIPE_V>();
        Sub(y, y, tmp, half_);
        // y2 = x2 * cos + x1 * sin
        Mul(y[half_], x[half_], cosF, half_);
        Mul(tmp, x, sinF, half_);
        PipeBarrier<PIPE_V>();
        Add(y[half_], y[half_], tmp, half_);
        PipeBarrier<PIPE_V>();

        LocalTensor<T> out = outQueue_.AllocTensor<T>();
        Cast(out, y, RoundMode::CAST_RINT, rotDim_);
        outQueue_.EnQue(out);
        out = outQueue_.DeQue<T>();
        DataCopy(tensor[offset], out, rotDim_);
        outQueue_.FreeTensor(out);
    }

    TPipe pipe_;
    TQue<QuePosition::VECIN, BUFFER_NUM> inQueue_;
    TQue<QuePosition::VECOUT, BUFFER_NUM> outQueue_;
    TBuf<TPosition::VECCALC> cosSinBuf_, cosF_, sinF_, xF_, yF_, tmpF_;
    GlobalTensor<int64_t> positions_;
    GlobalTensor<T> query_, key_, cosSin_;
    int32_t rotDim_ = 0, half_ = 0, headSize_ = 0, numHeads_ = 0, numKvHeads_ = 0;
    int64_t queryStride_ = 0, keyStride_ = 0, firstToken_ = 0, tokenCount_ = 0;
};

}  // namespace vllm_ascend

// dtype: 0 = float16, 1 = bfloat16
extern "C" __global__ __aicore__ void rotary_embedding_neox(
    GM_ADDR positions, GM_ADDR query, GM_ADDR key, GM_ADDR cosSin, int32_t rotDim,
    int64_t queryStride, int64_t keyStride, int32_t headSize, int32_t numHeads,
    int32_t numKvHeads, int64_t numTokens, int32_t dtype)
{
    if (dtype == 0) {
        vllm_ascend::RotaryEmbeddingNeox<half> op;
        op.Init(positions, query, key, cosSin, rotDim, queryStride, keyStride, headSize,
                numHeads, numKvHeads, numTokens);
        op.Process();
    } else {
        vllm_ascend::RotaryEmbeddingNeox<bfloat16_t> op;
        op.Init(positions, query, key, cosSin, rotDim, queryStride, keyStride, headSize,
                numHeads, numKvHeads, numTokens);
        op.Process();
    }
}
