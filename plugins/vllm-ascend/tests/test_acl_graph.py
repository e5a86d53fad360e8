"""ACL graphs under emulation: the graph reference's capture and replay, the
attention kernel's lengths updated before replay, and the static-graph wrapper.

Expected values are decode attention written out per request over the paged
cache (plain math), not the kernel reference's code.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from vllm_ascend import npu_graphs, npu_ops
from vllm_ascend.attention import (
    AscendAttentionImpl,
    AscendMetadata,
    AttentionState,
    compressed_causal_mask,
    recording_graph_tasks,
    update_graph_tasks,
)

HEADS, KV_HEADS, HEAD, BLOCK, BLOCKS = 4, 2, 16, 128, 4
LAYER = SimpleNamespace(layer_name="model.layers.0.self_attn.attn")
torch.manual_seed(0)


@pytest.fixture(autouse=True)
def emulated():
    npu_ops.select(emulated=True)


def test_replay_reruns_the_recorded_kernels_on_the_captured_tensors():
    x, w = torch.randn(4, 8), torch.randn(8)

    def step() -> torch.Tensor:
        y, _, _ = npu_ops.npu_add_rms_norm(x * 2, x, w, 1e-6)
        return y + 1

    graph = npu_graphs.new_graph()
    with npu_graphs.capture(graph):
        out = step()
    assert [t.name for t in graph.tasks] == ["aten.mul", "npu.npu_add_rms_norm", "aten.add"]
    for _ in range(2):
        x.copy_(torch.randn(4, 8))  # new input in the static buffer
        graph.replay()
        s = x * 3
        expected = s / torch.sqrt((s * s).mean(-1, keepdim=True) + 1e-6) * w + 1
        torch.testing.assert_close(out, expected)


def test_a_host_synchronisation_cannot_be_captured():
    x = torch.randn(3)
    with pytest.raises(RuntimeError, match="host wait for the device"), \
            npu_graphs.capture(npu_graphs.new_graph()):
        if x.sum() > 0:  # reads a device value on the host
            pass
    assert not npu_graphs.is_capturing()


def test_a_custom_op_is_recorded_by_what_it_launches():
    lib = torch.library.Library("vllm_ascend_test", "FRAGMENT")
    lib.define("double_swiglu(Tensor x, Tensor(a!) out) -> ()")

    def double_swiglu(x: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(npu_ops.npu_swiglu(x) * 2)

    lib.impl("double_swiglu", double_swiglu, "CPU")
    x, out = torch.randn(3, 8), torch.empty(3, 4)
    graph = npu_graphs.new_graph()
    with npu_graphs.capture(graph):
        torch.ops.vllm_ascend_test.double_swiglu(x, out)
    assert [t.name for t in graph.tasks] == ["npu.npu_swiglu", "aten.mul", "aten.copy_"]
    x.copy_(torch.randn(3, 8))
    graph.replay()
    a, b = x.chunk(2, -1)
    torch.testing.assert_close(out, a * torch.sigmoid(a) * b * 2)


# --- decode attention in a graph ------------------------------------------------------

class DecodeStep:
    """Two requests decoding over a paged cache, every input in a static buffer,
    as vLLM's runner keeps them for graphs."""

    def __init__(self) -> None:
        self.impl = AscendAttentionImpl(HEADS, HEAD, 1 / math.sqrt(HEAD), KV_HEADS)
        self.kv_cache = torch.randn(2, BLOCKS, BLOCK, KV_HEADS, HEAD)
        self.block_table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
        self.query = torch.empty(2, HEADS * HEAD)
        self.key = torch.empty(2, KV_HEADS * HEAD)
        self.value = torch.empty(2, KV_HEADS * HEAD)
        self.slots = torch.empty(2, dtype=torch.int64)
        self.out = torch.empty(2, HEADS * HEAD)

    def next(self, seq_lens: list[int]) -> AscendMetadata:
        """New tokens into the buffers; the metadata of a step at ``seq_lens``."""
        for buf in (self.query, self.key, self.value):
            buf.copy_(torch.randn_like(buf))
        self.slots.copy_(torch.tensor([
            int(self.block_table[r, (n - 1) // BLOCK]) * BLOCK + (n - 1) % BLOCK
            for r, n in enumerate(seq_lens)]))
        return AscendMetadata(
            state=AttentionState.DECODE_ONLY, num_actual_tokens=2,
            cumulative_query_lens=[1, 2], seq_lens=seq_lens, block_table=self.block_table,
            slot_mapping=self.slots, mask=compressed_causal_mask(torch.device("cpu")))

    def forward(self, meta: AscendMetadata) -> torch.Tensor:
        return self.impl.forward(LAYER, self.query, self.key, self.value, self.kv_cache,
                                 meta, self.out)

    def expected(self, seq_lens: list[int]) -> torch.Tensor:
        """Each request's query over its first ``seq_lens`` cached positions."""
        rows = []
        for r, n in enumerate(seq_lens):
            pos = torch.arange(n)
            blocks = self.block_table[r, pos // BLOCK].long()
            k = self.kv_cache[0, blocks, pos % BLOCK]  # [n, kv_heads, head]
            v = self.kv_cache[1, blocks, pos % BLOCK]
            q = self.query[r].view(HEADS, HEAD)
            heads = []
            for h in range(HEADS):
                g = h // (HEADS // KV_HEADS)
                p = torch.softmax(k[:, g] @ q[h] / math.sqrt(HEAD), 0)
                heads.append(p @ v[:, g])
            rows.append(torch.cat(heads))
        return torch.stack(rows)


def test_decode_attention_replays_with_the_lengths_given_before_replay():
    step = DecodeStep()
    captured_meta = step.next([5, 9])
    graph = npu_graphs.new_graph()
    with recording_graph_tasks() as tasks, npu_graphs.capture(graph):
        out = step.forward(captured_meta)
    torch.testing.assert_close(out, step.expected([5, 9]))
    assert [t.layer_name for t in tasks] == [LAYER.layer_name]

    meta = step.next([6, 10])
    graph.replay()  # no update: the graph keeps the captured lengths
    torch.testing.assert_close(out, step.expected([5, 9]))
    assert not torch.allclose(out, step.expected([6, 10]))

    for lens in ([6, 10], [7, 140]):  # the second one reaches the next cache block
        meta = step.next(lens)
        update_graph_tasks(tasks, {LAYER.layer_name: meta})
        graph.replay()
        torch.testing.assert_close(out, step.expected(lens))


def test_a_step_the_graph_cannot_replay_is_refused():
    step = DecodeStep()
    meta = step.next([5, 9])
    graph = npu_graphs.new_graph()
    with recording_graph_tasks() as tasks, npu_graphs.capture(graph):
        step.forward(meta)
    three = AscendMetadata(**{**meta.__dict__, "seq_lens": [6, 10, 3]})
    with pytest.raises(RuntimeError, match="2-request decode step cannot replay a 3-request"):
        update_graph_tasks(tasks, {LAYER.layer_name: three})
    prefill = AscendMetadata(**{**meta.__dict__, "state": AttentionState.PREFILL_NO_CACHE})
    with pytest.raises(RuntimeError, match="decode steps only"), \
            npu_graphs.capture(npu_graphs.new_graph()), recording_graph_tasks():
        step.forward(prefill)
    # captured where nothing would update its lengths
    with pytest.raises(RuntimeError, match="outside ACLGraphWrapper"), \
            npu_graphs.capture(npu_graphs.new_graph()):
        step.forward(meta)


def test_an_update_must_reissue_the_group_it_names():
    x = torch.randn(2, 8)
    graph = npu_graphs.new_graph()
    with npu_graphs.capture(graph):
        npu_graphs.task_group_begin(npu_graphs.current_stream())
        npu_ops.npu_swiglu(x)
        handle = npu_graphs.task_group_end(npu_graphs.current_stream())
    stream = npu_graphs.current_stream()
    npu_graphs.task_update_begin(stream, handle)
    with pytest.raises(RuntimeError, match=r"issues npu\.npu_rms_norm where the task group "
                                           r"holds npu\.npu_swiglu"):
        npu_ops.npu_rms_norm(x, torch.ones(8), 1e-6)
    with pytest.raises(RuntimeError, match="issued 0 kernels; task group 0 holds 1"):
        npu_graphs.task_update_end(stream)


# --- the wrapper vLLM's runner uses ---------------------------------------------------

def test_wrapper_captures_once_and_replays_each_step_with_its_lengths():
    from vllm.compilation import monitor
    from vllm.compilation.counter import compilation_counter
    from vllm.config import CUDAGraphMode, VllmConfig
    from vllm.forward_context import BatchDescriptor, ForwardContext, override_forward_context

    from vllm_ascend.acl_graph import ACLGraphWrapper

    step, calls = DecodeStep(), []

    def model() -> torch.Tensor:  # the runnable: reads the step's metadata as layers do
        from vllm.forward_context import get_forward_context

        calls.append(1)
        return step.forward(get_forward_context().attn_metadata[LAYER.layer_name])

    wrapper = ACLGraphWrapper(model, VllmConfig(), CUDAGraphMode.FULL)
    captures = compilation_counter.num_cudagraph_captured

    def run(lens: list[int], mode: CUDAGraphMode) -> torch.Tensor:
        context = ForwardContext(
            no_compile_layers={}, attn_metadata={LAYER.layer_name: step.next(lens)},
            slot_mapping={}, cudagraph_runtime_mode=mode,
            batch_descriptor=BatchDescriptor(num_tokens=2, num_reqs=2, uniform=True))
        with override_forward_context(context):
            return wrapper()

    # As the runner does: capture while vLLM allows it, replay once it forbids it.
    allowed = monitor.cudagraph_capturing_enabled  # an engine run here before leaves it off
    try:
        monitor.set_cudagraph_capturing_enabled(True)
        out = run([5, 9], CUDAGraphMode.FULL)
        torch.testing.assert_close(out, step.expected([5, 9]))
        monitor.set_cudagraph_capturing_enabled(False)
        for lens in ([6, 10], [7, 11]):
            out = run(lens, CUDAGraphMode.FULL)
            torch.testing.assert_close(out, step.expected(lens))
        assert len(calls) == 1, "the model ran once, to capture; the later steps replayed"
        assert compilation_counter.num_cudagraph_captured == captures + 1
        out = run([8, 12], CUDAGraphMode.NONE)  # an eager step runs the model
        torch.testing.assert_close(out, step.expected([8, 12]))
        assert len(calls) == 2
    finally:
        monitor.set_cudagraph_capturing_enabled(allowed)


# --- what a whole model step brings into a graph ---------------------------------------

def test_a_conversion_under_inference_mode_is_recorded():
    """Under inference mode ``x.long()`` reaches the recorder as ``aten.to``, an op
    that may alias its input: here it copies, so it is a kernel of the graph."""
    ids, table = torch.tensor([1, 2], dtype=torch.int32), torch.randn(5, 3)
    graph = npu_graphs.new_graph()
    with torch.inference_mode(), npu_graphs.capture(graph):
        out = torch.nn.functional.embedding(ids.long(), table)
        same = table.contiguous()  # already contiguous: a view, nothing to replay
    assert [t.name for t in graph.tasks] == ["aten.to", "aten.embedding"]
    assert same.data_ptr() == table.data_ptr()
    ids.copy_(torch.tensor([4, 0]))
    graph.replay()
    torch.testing.assert_close(out, table[[4, 0]])


def _builder():
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    from vllm_ascend.attention import AscendMetadataBuilder

    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=KV_HEADS, head_size=HEAD,
                             dtype=torch.float32)
    return AscendMetadataBuilder(spec, [LAYER.layer_name], VllmConfig(), torch.device("cpu"))


def _common(query_lens: list[int], seq_lens: list[int], slots: list[int]):
    from vllm.v1.attention.backend import CommonAttentionMetadata

    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return CommonAttentionMetadata(
        query_start_loc=starts, query_start_loc_cpu=starts, seq_lens=lens,
        seq_lens_cpu_upper_bound=lens, num_reqs=len(query_lens),
        num_actual_tokens=len(slots), max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), block_table_tensor=torch.zeros(len(query_lens), 4,
                                                                  dtype=torch.int32),
        slot_mapping=torch.tensor(slots, dtype=torch.int64))


def test_a_padded_decode_step_reads_and_writes_the_null_block():
    """vLLM pads a 3-request decode step to a graph of 4: the padded request has
    no query token and no length, and its token slot -1."""
    common = _common([1, 1, 1, 0], [9, 130, 1, 0], [300, 700, 129, -1])
    meta = _builder().build(0, common)
    assert meta.state is AttentionState.DECODE_ONLY  # a one-token prompt among decodes
    assert meta.seq_lens == [9, 130, 1, 1]
    # the padded token: its own slot (its index) in block 0, vLLM's null block
    assert meta.slot_mapping.tolist() == [300, 700, 129, 3]
    assert meta.slot_mapping.data_ptr() == common.slot_mapping.data_ptr()  # in place
    # a dummy step (vLLM's warm-up and capture): every slot -1, each its own slot
    dummy = _builder().build(0, _common([1] * 4, [1] * 4, [-1] * 4))
    assert dummy.slot_mapping.tolist() == [0, 1, 2, 3]


def test_padding_is_refused_outside_decode_steps():
    with pytest.raises(RuntimeError, match="pads decode steps only"):
        _builder().build(0, _common([3, 1, 0], [3, 9, 0], [1, 2, 3, 200, -1]))
