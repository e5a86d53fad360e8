"""On an Atlas A2: torch_npu's kernels against the references, and vLLM on the NPU.

Every kernel call is one of ``npu_cases.CASES``: each NPU op the plugin calls,
in the forms it calls them and at the default model's sizes, made only of
what the kernels take (float16/bfloat16, paged blocks of 128 tokens, the
documented dtype combinations; ``test_npu_cases.py`` holds each to that on any
machine). A case runs through its reference on the host and through
torch_npu's kernel on the NPU from the same arguments; every defined output and
whatever the op writes in place must agree within the tolerance of its dtype.
Then vLLM serves the default model on the NPU in bfloat16, decode steps
replayed from ACL graphs, held to the conformance suite's top-1 agreement with
transformers in float32, in its prefill and its decode steps. One table of it
all is printed at the end (``ci/check_on_npu.sh`` runs this file). Where
torch_npu does not import or sees no NPU every test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from npu_cases import CASES, TOLERANCE, Case, Row, compare, format_table, run_case

from vllm_ascend import _npu_visible, emulation, npu_ops

VISIBLE, WHY = _npu_visible()
pytestmark = [pytest.mark.npu,
              pytest.mark.skipif(not VISIBLE, reason=f"needs an NPU: {WHY}")]

#: the table's rows, in the order the tests ran
ROWS: list[Row] = []


@pytest.fixture(scope="module", autouse=True)
def table(request: pytest.FixtureRequest) -> Iterator[list[Row]]:
    """Prints every row of the module's tests as one table when they are done."""
    yield ROWS
    if ROWS:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        title = f"vllm-ascend on {torch.npu.get_device_name(0)}"
        if reporter is None:
            print(f"\n{title}\n{format_table(ROWS)}")
        else:
            reporter.write_sep("=", title)
            reporter.write_line(format_table(ROWS))


@contextmanager
def npu_kernels() -> Iterator[None]:
    """``npu_ops`` calls go to torch_npu's kernels inside the block."""
    npu_ops.select(emulated=False)
    try:
        yield
        torch.npu.synchronize()
    finally:
        npu_ops.select(emulated=True)


def _record(rows: list[Row]) -> None:
    ROWS.extend(rows)
    failed = [row for row in rows if not row.passed]
    assert not failed, "\n" + format_table(failed)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_kernel_equals_reference(case: Case) -> None:
    _record(run_case(case, "npu", npu_kernels))


def test_native_rotary_kernel_equals_reference() -> None:
    """The plugin's own AscendC rotary kernel (in place, on query and key
    slices of one QKV tensor) against npu_mrope's reference."""
    from vllm_ascend import native

    if not native.load():
        pytest.skip("vllm-ascend was installed without its native kernels (no CANN at build)")
    tokens, head, rot, max_pos = 9, 64, 64, 512
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    angles = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]
    cache = torch.cat((angles.cos(), angles.sin()), -1)
    positions = torch.randint(0, max_pos, (tokens,), generator=torch.Generator().manual_seed(0))
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        qkv = torch.randn(tokens, 15 * head, generator=torch.Generator().manual_seed(1)).to(dtype)
        query, key = qkv[:, : 9 * head], qkv[:, 9 * head: 12 * head]
        want = emulation.npu_mrope(positions, query.contiguous(), key.contiguous(),
                                   cache.to(dtype), head)
        on_npu = qkv.to("npu")
        q, k = on_npu[:, : 9 * head], on_npu[:, 9 * head: 12 * head]
        native.rotary_embedding(positions.to("npu"), q, k, head, cache.to(dtype).to("npu"),
                                True)
        torch.npu.synchronize()
        label = f"q, k slices of qkv ({tokens}, {15 * head}) {str(dtype).removeprefix('torch.')}"
        rows += [compare(f"_C_ascend.rotary_embedding {name}", label, got, expected,
                         TOLERANCE[dtype])
                 for name, got, expected in (("query", q, want[0]), ("key", k, want[1]))]
    _record(rows)


#: the engine's report, one line of its stdout among vLLM's logs
REPORT = "vllm-ascend device check:"
ENGINE_RUN = r"""
import json, sys
from transformers import AutoTokenizer
from vllm import LLM, SamplingParams
from vllm.platforms import current_platform
from vllm_ascend import acl_graph
from vllm_harness.agreement import llm_top1_agreement
from vllm_harness.fixtures import MAX_TOKENS, PROMPTS

REPORT, model, greedy = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
llm = LLM(model=model, dtype="bfloat16", max_model_len=512)
compilation = llm.llm_engine.vllm_config.compilation_config
prefill = llm_top1_agreement(llm, AutoTokenizer.from_pretrained(model), greedy)
outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=MAX_TOKENS,
                                            ignore_eos=True), use_tqdm=False)
print(REPORT, json.dumps({
    "platform": type(current_platform).__name__,
    "graph_mode": compilation.cudagraph_mode.name,
    "capture_sizes": list(compilation.cudagraph_capture_sizes),
    "replays": sum(acl_graph.replayed.values()),
    "prefill_agreement": prefill,
    "prompts": [list(o.prompt_token_ids) for o in outs],
    "generated": [list(o.outputs[0].token_ids) for o in outs],
}))
"""


def _decode_agreement(hf_model: tuple, prompts: list[list[int]],
                      generated: list[list[int]]) -> float:
    """Share of the engine's decode-step tokens (all but each first, which its
    prefill chose) that are transformers' float32 top-1 after the engine's own
    tokens (an exact tie counts)."""
    _, model = hf_model
    agree = total = 0
    with torch.no_grad():
        for prompt, tokens in zip(prompts, generated, strict=True):
            logits = model(torch.tensor([prompt + tokens])).logits[0]
            for i in range(1, len(tokens)):
                row = logits[len(prompt) + i - 1]
                agree += bool(row[tokens[i]] >= row.max())
                total += 1
    return agree / total


def test_device_engine_agrees_with_transformers(model_dir: str, hf_model: tuple) -> None:
    """vLLM on the NPU itself (its worker, model runner, kernels and ACL graphs),
    bfloat16, held to the conformance suite's 16-bit criterion against
    transformers in float32: top-1 agreement on teacher-forced prompt positions
    (prefill) and on the engine's own greedy decode steps (replayed graphs)."""
    from vllm_harness.agreement import MIN_AGREEMENT
    from vllm_harness.fixtures import reference_greedy

    greedy = reference_greedy(model_dir, lambda: hf_model)
    # the engine core in this subprocess, so its graph replays are counted there
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ASCEND_EMULATE"}
    env.update(VLLM_PLUGINS="ascend", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    result = subprocess.run(
        [sys.executable, "-c", ENGINE_RUN, REPORT, model_dir, json.dumps(greedy)],
        capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(REPORT)]
    report = json.loads(line.removeprefix(REPORT))
    assert report["platform"] == "NPUPlatform", report["platform"]
    decode = _decode_agreement(hf_model, report["prompts"], report["generated"])
    sizes = report["capture_sizes"]
    label = (f"default model bf16, ACL graphs {report['graph_mode']} of {len(sizes)} batch "
             f"sizes, {report['replays']} replays")
    limit = f"{1 - MIN_AGREEMENT:g} of positions"
    rows = [Row("engine prefill: top-1 disagreement", label, 1 - report["prefill_agreement"],
                limit, report["prefill_agreement"] >= MIN_AGREEMENT),
            Row("engine decode: top-1 disagreement", label, 1 - decode, limit,
                decode >= MIN_AGREEMENT and report["replays"] > 0
                and report["graph_mode"] == "FULL_DECODE_ONLY")]
    _record(rows)
