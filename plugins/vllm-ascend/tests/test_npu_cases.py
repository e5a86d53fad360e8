"""The device check (test_on_npu.py) is made of calls the kernels take, checked here.

test_on_npu.py runs only on an NPU, so a call it makes that the kernel refuses
would surface only there. Each of its cases runs here through the references
under the kernels' rules (``emulation.kernel_rules``: no float32 relaxation)
and torch_npu's registered schemas (conftest), with the device check's own
runner and table; the references refuse what the kernels refuse, which the
last tests show for the calls the device check once made (float32 attention
over blocks of 8, a float32 npu_quant_matmul output).
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import test_on_npu
import torch
from npu_cases import Case, covered_ops, format_table, run_case

from vllm_ascend import emulation, npu_ops


def test_every_op_the_plugin_calls_has_a_device_case() -> None:
    missing = set(emulation.REFERENCES) - set(covered_ops())
    assert not missing, f"NPU ops without a case in the device check: {sorted(missing)}"


@pytest.mark.parametrize("case", test_on_npu.CASES, ids=lambda case: case.name)
def test_the_kernel_takes_the_device_case(case: Case) -> None:
    """The device check's own run of the case, with the references standing in
    for the kernels: every reference takes the call under the kernels' rules,
    through the registered schema, and the runner compares what it should."""
    before = emulation.relaxed.copy()
    rows = run_case(case, "cpu", nullcontext)
    assert emulation.relaxed == before, "a device case leaned on the float32 relaxation"
    assert rows and all(row.passed and row.max_error == 0 for row in rows), format_table(rows)


def _decode(dtype: torch.dtype, block: int) -> dict:
    q = torch.randn(2, 1, 4 * 16).to(dtype)
    cache = torch.randn(4, block, 2 * 16).to(dtype)
    return dict(query=q, key=cache, value=cache,
                block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
                block_size=block, actual_seq_lengths_kv=[block + 1, 3], num_heads=4,
                num_key_value_heads=2, input_layout="BSH")


def test_the_references_refuse_float32_attention_under_the_kernels_rules() -> None:
    """float32 attention, as the device check once replayed, is the float32
    relaxation's alone: refused under the kernels' rules, taken (and counted) outside."""
    with emulation.kernel_rules(), pytest.raises(ValueError, match="float32 relaxation"):
        npu_ops.npu_fused_infer_attention_score(**_decode(torch.float32, 128))
    before = emulation.relaxed["npu_fused_infer_attention_score"]
    npu_ops.npu_fused_infer_attention_score(**_decode(torch.float32, 128))
    assert emulation.relaxed["npu_fused_infer_attention_score"] == before + 1
    with emulation.kernel_rules():
        npu_ops.npu_fused_infer_attention_score(**_decode(torch.bfloat16, 128))


@pytest.mark.parametrize("block", [8, 16, 64, 192, 640])
def test_the_references_refuse_block_sizes_the_kernel_refuses(block: int) -> None:
    """A paged cache in blocks of 128 to 512 tokens, multiples of 128, with or
    without the relaxation (the old device check's blocks were 8 tokens)."""
    with pytest.raises(ValueError, match=f"block_size={block}"):
        npu_ops.npu_fused_infer_attention_score(**_decode(torch.bfloat16, block))


def test_the_references_refuse_what_npu_quant_matmul_does_not_take() -> None:
    x1 = torch.randint(-128, 128, (3, 32), dtype=torch.int8)
    x2 = torch.randint(-128, 128, (32, 8), dtype=torch.int8)
    scale, per_token = torch.rand(8), torch.rand(3)
    with emulation.kernel_rules():
        with pytest.raises(ValueError, match="float32 relaxation"):
            npu_ops.npu_quant_matmul(x1, x2, scale, output_dtype=torch.float32)
        # float16 out with a floating bias needs a per-token scale; an int8 out none
        with pytest.raises(ValueError, match="takes no output_dtype"):
            npu_ops.npu_quant_matmul(x1, x2, scale, bias=torch.rand(8).half(),
                                     output_dtype=torch.float16)
        with pytest.raises(ValueError, match="takes no output_dtype"):
            npu_ops.npu_quant_matmul(x1, x2, scale, pertoken_scale=per_token)
        with pytest.raises(ValueError, match="float32 relaxation"):
            npu_ops.npu_dynamic_quant(torch.randn(3, 32))
        npu_ops.npu_quant_matmul(x1, x2, scale, bias=torch.rand(8).half(),
                                 pertoken_scale=per_token, output_dtype=torch.float16)
    # outside: the emulated float32 engines' form, on bfloat16's terms
    npu_ops.npu_quant_matmul(x1, x2, scale, pertoken_scale=per_token, output_dtype=torch.float32)
