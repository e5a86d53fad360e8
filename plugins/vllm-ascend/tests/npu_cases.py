"""The device check's kernel calls, and how each is compared with its reference.

One or more cases per NPU op the plugin calls (every key of
``emulation.REFERENCES``), in the forms the plugin uses and at the default
model's sizes (hidden 576, 9 query and 3 key/value heads of 64), each made only
of what torch_npu 2.13.0's docs say an Atlas A2 kernel takes: float16/bfloat16
attention over a paged cache of 128-token blocks, npu_quant_matmul outputs
from its table of dtype combinations, 16-bit inputs to npu_dynamic_quant.

Shared by ``test_on_npu.py``, which runs each case on the NPU and compares it
with the reference, and ``test_npu_cases.py``, which runs each here through the
references under the kernels' rules (``emulation.kernel_rules``: no float32
relaxation) and torch_npu's registered schemas, so a case the kernel would
refuse fails on any machine, before anyone takes it to an NPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from vllm_ascend import emulation, npu_ops

HIDDEN, HEADS, KV_HEADS, HEAD, INTERMEDIATE = 576, 9, 3, 64, 1536
BLOCK = 128
EXPERTS, TOP_K = 8, 2
HALF = (torch.bfloat16, torch.float16)

#: (atol, rtol) by dtype: |kernel - reference| <= atol + rtol * |reference|.
#: 16-bit outputs are a few of their ulps apart (the reference rounds once from
#: float32, a kernel may round an intermediate); float32 outputs of 16-bit inputs
#: (lse, rstd, scales) differ in summation order and the NPU's exp and rsqrt;
#: integer outputs (indices, counts) are exact.
TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.bfloat16: (1e-2, 1.6e-2),
    torch.float16: (2e-3, 2e-3),
    torch.float32: (1e-4, 1e-3),
}
#: quantized outputs may land one step apart: the kernel may multiply by 1/scale
#: where the reference divides, which moves a value near .5 across it
ONE_STEP = {torch.int8: (1.0, 0.0)}

Arguments = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    """One kernel call, and what of it is compared."""

    name: str
    #: ``npu_ops`` name; ``<op>.out`` for the out= overload
    op: str
    #: the shapes and dtypes, as the table shows them
    label: str
    #: the call's arguments on the host (seeded: the same every time)
    build: Callable[[], Arguments]
    #: (result, args, kwargs) after the call -> the named tensors to compare: its
    #: defined outputs and what it writes in place
    compared: Callable[[Any, tuple, dict], dict[str, torch.Tensor]]
    #: run on the placed arguments first, in the same mode (a workspace)
    prepare: Callable[[tuple, dict], None] | None = None
    #: other NPU ops the case calls (in ``prepare``)
    also: tuple[str, ...] = ()
    #: (atol, rtol) by dtype, over :data:`TOLERANCE`
    tolerance: dict[torch.dtype, tuple[float, float]] = field(default_factory=dict)

    def tolerance_of(self, dtype: torch.dtype) -> tuple[float, float]:
        return self.tolerance.get(dtype, TOLERANCE.get(dtype, (0.0, 0.0)))


@dataclass(frozen=True)
class Row:
    """One line of the device check's table."""

    kernel: str
    shape: str
    max_error: float
    tolerance: str
    passed: bool


def outputs(*names: str | None) -> Callable[[Any, tuple, dict], dict[str, torch.Tensor]]:
    """The result's outputs by position (one tensor, or a tuple or list of them);
    None names an output the kernel leaves undefined."""

    def pick(result: Any, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        values = result if isinstance(result, (tuple, list)) else (result,)
        if len(values) != len(names):
            raise AssertionError(f"{len(values)} outputs, expected {len(names)}")
        return {n: v for n, v in zip(names, values) if n is not None}

    return pick


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int, dtype: torch.dtype, scale: float = 1.0
           ) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _short(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(
        dtype, str(dtype).removeprefix("torch."))


# --- normalisation, activation, rotary embedding ----------------------------------

def _rms_norm(dtype: torch.dtype) -> Case:
    def build() -> Arguments:
        g = _gen(1)
        return (_randn(g, 7, HIDDEN, dtype=dtype), _randn(g, HIDDEN, dtype=dtype), 1e-5), {}

    return Case(f"npu_rms_norm/{_short(dtype)}", "npu_rms_norm", f"x (7, {HIDDEN}) {_short(dtype)}",
                build, outputs("y", "rstd"))


def _add_rms_norm(dtype: torch.dtype) -> Case:
    def build() -> Arguments:
        g = _gen(2)
        x1, x2 = _randn(g, 7, HIDDEN, dtype=dtype), _randn(g, 7, HIDDEN, dtype=dtype)
        return (x1, x2, _randn(g, HIDDEN, dtype=dtype), 1e-5), {}

    return Case(f"npu_add_rms_norm/{_short(dtype)}", "npu_add_rms_norm",
                f"x1, x2 (7, {HIDDEN}) {_short(dtype)}", build, outputs("y", "rstd", "x"))


def _swiglu(dtype: torch.dtype) -> Case:
    def build() -> Arguments:
        return (_randn(_gen(3), 7, 2 * INTERMEDIATE, dtype=dtype),), {"dim": -1}

    return Case(f"npu_swiglu/{_short(dtype)}", "npu_swiglu",
                f"x (7, {2 * INTERMEDIATE}) {_short(dtype)}", build, outputs("y"))


def _cos_sin(positions: torch.Tensor, rotary: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary, 2).float() / rotary))
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def _rotary_mul(dtype: torch.dtype) -> Case:
    def build() -> Arguments:
        # BSND input, cos and sin 1S1D in [-1, 1] ('half': each angle twice)
        g = _gen(4)
        cos, sin = _cos_sin(torch.arange(7), HEAD)
        r1 = torch.cat((cos, cos), -1)[None, :, None, :].to(dtype)
        r2 = torch.cat((sin, sin), -1)[None, :, None, :].to(dtype)
        return (_randn(g, 1, 7, HEADS, HEAD, dtype=dtype), r1, r2), {"rotary_mode": "half"}

    return Case(f"npu_rotary_mul/{_short(dtype)}", "npu_rotary_mul",
                f"x (1, 7, {HEADS}, {HEAD}) BSND {_short(dtype)}", build, outputs("y"))


def _mrope(dtype: torch.dtype) -> Case:
    def build() -> Arguments:
        # as the rotary layer calls it: 2-D query and key, NeoX pairing
        g = _gen(5)
        cos, sin = _cos_sin(torch.arange(512), HEAD)
        cache = torch.cat((cos, sin), -1).to(dtype)
        positions = torch.tensor([0, 1, 2, 3, 4, 130, 511])
        q, k = _randn(g, 7, HEADS * HEAD, dtype=dtype), _randn(g, 7, KV_HEADS * HEAD, dtype=dtype)
        return (positions, q, k, cache, HEAD), {"rotary_mode": "half"}

    return Case(f"npu_mrope/{_short(dtype)}", "npu_mrope",
                f"q (7, {HEADS * HEAD}), k (7, {KV_HEADS * HEAD}) {_short(dtype)}", build,
                outputs("query", "key"))


# --- paged KV cache and attention -----------------------------------------------------

def _scatter_pa_kv_cache(dtype: torch.dtype) -> Case:
    def build() -> Arguments:
        g = _gen(6)
        key, value = (_randn(g, 7, KV_HEADS, HEAD, dtype=dtype) for _ in range(2))
        caches = [torch.zeros(4, BLOCK, KV_HEADS, HEAD, dtype=dtype) for _ in range(2)]
        slots = torch.tensor([0, 1, 127, 128, 300, 511, 260])
        return (key, value, *caches, slots), {"cache_mode": "Norm"}

    def written(result: Any, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        return {"key_cache": args[2], "value_cache": args[3]}

    return Case(f"npu_scatter_pa_kv_cache/{_short(dtype)}", "npu_scatter_pa_kv_cache",
                f"k, v (7, {KV_HEADS}, {HEAD}) into (4, {BLOCK}, {KV_HEADS}, {HEAD}) "
                f"{_short(dtype)}", build, written)


def compressed_mask() -> torch.Tensor:
    """The shared 2048² causal mask of sparse_mode 3 (1: masked), as the plugin builds it."""
    size = emulation.COMPRESSED_MASK_SIZE
    return torch.triu(torch.ones(size, size, dtype=torch.int8), diagonal=1)


def _paged(g: torch.Generator, kv_lens: list[int], dtype: torch.dtype
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Key and value caches (blocks, 128, kv_heads · head) holding ``kv_lens``
    tokens per request in scattered blocks, and their int32 block table."""
    need = [math.ceil(n / BLOCK) for n in kv_lens]
    blocks = sum(need) + 2
    order = torch.randperm(blocks, generator=g)[:sum(need)].tolist()
    table = torch.zeros(len(kv_lens), max(need), dtype=torch.int32)
    start = 0
    for r, n in enumerate(need):
        table[r, :n] = torch.tensor(order[start:start + n], dtype=torch.int32)
        start += n
    key = _randn(g, blocks, BLOCK, KV_HEADS * HEAD, dtype=dtype)
    value = _randn(g, blocks, BLOCK, KV_HEADS * HEAD, dtype=dtype)
    return key, value, table


def _prefill(dtype: torch.dtype) -> Case:
    q_lens = [5, 12]

    def build() -> Arguments:
        # a batch of fresh prompts: K and V in TND too, causal through the mask
        g = _gen(7)
        tokens = sum(q_lens)
        q = _randn(g, tokens, HEADS, HEAD, dtype=dtype)
        k, v = (_randn(g, tokens, KV_HEADS, HEAD, dtype=dtype) for _ in range(2))
        ends = [sum(q_lens[: i + 1]) for i in range(len(q_lens))]
        return (q, k, v), dict(
            atten_mask=compressed_mask(), actual_seq_lengths=ends, actual_seq_lengths_kv=ends,
            num_heads=HEADS, num_key_value_heads=KV_HEADS, scale=HEAD ** -0.5,
            input_layout="TND", sparse_mode=3, softmax_lse_flag=True)

    return Case(f"npu_fused_infer_attention_score/prefill/{_short(dtype)}",
                "npu_fused_infer_attention_score",
                f"TND q ({sum(q_lens)}, {HEADS}, {HEAD}), causal {_short(dtype)}", build,
                outputs("attention", "lse"))


def _chunked_prefill(dtype: torch.dtype) -> Case:
    q_lens, kv_lens = [3, 1, 40], [200, 129, 40]

    def build() -> Arguments:
        # prompts over a paged cache: context already cached, a decode among them
        g = _gen(8)
        q = _randn(g, sum(q_lens), HEADS, HEAD, dtype=dtype)
        key, value, table = _paged(g, kv_lens, dtype)
        ends = [sum(q_lens[: i + 1]) for i in range(len(q_lens))]
        return (q, key, value), dict(
            atten_mask=compressed_mask(), actual_seq_lengths=ends, actual_seq_lengths_kv=kv_lens,
            block_table=table, block_size=BLOCK, num_heads=HEADS,
            num_key_value_heads=KV_HEADS, scale=HEAD ** -0.5, input_layout="TND",
            sparse_mode=3, softmax_lse_flag=False)

    return Case(f"npu_fused_infer_attention_score/paged/{_short(dtype)}",
                "npu_fused_infer_attention_score",
                f"TND q ({sum(q_lens)}, {HEADS}, {HEAD}), kv {kv_lens} in blocks of {BLOCK} "
                f"{_short(dtype)}", build, outputs("attention", None))


def _decode_arguments(dtype: torch.dtype, seed: int) -> Arguments:
    kv_lens = [1, 130, 300, 17]
    g = _gen(seed)
    q = _randn(g, len(kv_lens), 1, HEADS * HEAD, dtype=dtype)
    key, value, table = _paged(g, kv_lens, dtype)
    return (q, key, value), dict(
        block_table=table, block_size=BLOCK, actual_seq_lengths_kv=kv_lens, num_heads=HEADS,
        num_key_value_heads=KV_HEADS, scale=HEAD ** -0.5, input_layout="BSH", sparse_mode=0)


def _decode(dtype: torch.dtype) -> Case:
    def build() -> Arguments:
        args, kwargs = _decode_arguments(dtype, 9)
        return args, {**kwargs, "softmax_lse_flag": True}

    return Case(f"npu_fused_infer_attention_score/decode/{_short(dtype)}",
                "npu_fused_infer_attention_score",
                f"BSH q (4, 1, {HEADS * HEAD}), kv [1, 130, 300, 17] {_short(dtype)}", build,
                outputs("attention", "lse"))


def _workspace(args: tuple, kwargs: dict) -> None:
    """The kernel's scratch memory for these arguments, as an ACL graph holds it."""
    plain = {k: v for k, v in kwargs.items() if k not in ("out", "workspace")}
    kwargs["workspace"] = npu_ops._npu_fused_infer_attention_score_get_max_workspace(
        *args, **plain)


def _decode_out(dtype: torch.dtype) -> Case:
    def build() -> Arguments:
        # the decode step of an ACL graph: results written into the step's buffers
        args, kwargs = _decode_arguments(dtype, 10)
        attention = torch.zeros(4, 1, HEADS * HEAD, dtype=dtype)
        # softmax_lse_flag off: the kernel's lse output is reserved ([1], float32)
        lse = torch.zeros(1, dtype=torch.float32)
        return args, {**kwargs, "workspace": None, "out": [attention, lse]}

    def written(result: Any, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        return {"attention (out[0])": kwargs["out"][0]}

    return Case(f"npu_fused_infer_attention_score.out/decode/{_short(dtype)}",
                "npu_fused_infer_attention_score.out",
                f"BSH q (4, 1, {HEADS * HEAD}), workspace, out= {_short(dtype)}", build,
                written, prepare=_workspace,
                also=("_npu_fused_infer_attention_score_get_max_workspace",))


# --- mixture of experts -----------------------------------------------------------------

def _router_logits(g: torch.Generator, tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """Distinct logits in each row, exact in 16 bits: no ties for top-k to break."""
    rows = [torch.randperm(EXPERTS, generator=g).float() * 0.5 - 2 for _ in range(tokens)]
    return torch.stack(rows).to(dtype)


def _choices(g: torch.Generator, tokens: int) -> torch.Tensor:
    rows = [torch.randperm(EXPERTS, generator=g)[:TOP_K] for _ in range(tokens)]
    return torch.stack(rows).to(torch.int32)


def _gating(dtype: torch.dtype, renorm: int) -> Case:
    def build() -> Arguments:
        return (_router_logits(_gen(11), 7, dtype),), dict(
            k=TOP_K, renorm=renorm, output_softmax=renorm == 0)

    # the softmax output is defined only with output_softmax and renorm=0
    names = ("y", "expert_idx", "softmax" if renorm == 0 else None)
    return Case(f"npu_moe_gating_top_k_softmax_v2/renorm{renorm}/{_short(dtype)}",
                "npu_moe_gating_top_k_softmax_v2",
                f"logits (7, {EXPERTS}), k={TOP_K}, renorm={renorm} {_short(dtype)}", build,
                outputs(*names))


def _init_routing(dtype: torch.dtype, row_idx_type: int,
                  expert_range: tuple[int, int] | None) -> Case:
    tokens = 7

    def build() -> Arguments:
        g = _gen(12)
        x = _randn(g, tokens, HIDDEN, dtype=dtype)
        return (x, _choices(g, tokens)), dict(
            active_num=tokens * TOP_K, expert_num=EXPERTS, expert_tokens_num_type=1,
            expert_tokens_num_flag=True, active_expert_range=list(expert_range or ()),
            row_idx_type=row_idx_type)

    def defined(result: Any, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        # rows past the kept choices are undefined, as is expanded_scale without scale
        expanded, row_idx, counts, _ = result
        start, end = expert_range or (0, EXPERTS)
        kept = int(((args[1] >= start) & (args[1] < end)).sum())
        index = row_idx if row_idx_type == 0 else row_idx[:kept]
        return {"expanded_x": expanded[:kept], "expanded_row_idx": index,
                "expert_tokens": counts}

    where = f", experts {list(expert_range)}" if expert_range else ""
    return Case(f"npu_moe_init_routing_v2/row_idx{row_idx_type}"
                f"{'/ep' if expert_range else ''}/{_short(dtype)}",
                "npu_moe_init_routing_v2",
                f"x ({tokens}, {HIDDEN}), k={TOP_K} of {EXPERTS}{where}, row_idx_type="
                f"{row_idx_type} {_short(dtype)}", build, defined)


def _grouped_matmul(dtype: torch.dtype, group_list_type: int) -> Case:
    counts = [3, 0, 2, 1, 4, 0, 2, 2]

    def build() -> Arguments:
        # the experts' weights read through a transposed view, as the MoE layer does
        g = _gen(13)
        x = _randn(g, sum(counts), HIDDEN, dtype=dtype)
        weight = _randn(g, EXPERTS, 2 * 64, HIDDEN, dtype=dtype, scale=0.05).transpose(1, 2)
        group_list = torch.tensor(counts, dtype=torch.int64)
        if group_list_type == 0:  # the running sum
            group_list = group_list.cumsum(0)
        return ([x], [weight]), dict(group_list=group_list, split_item=2, group_type=0,
                                     group_list_type=group_list_type)

    return Case(f"npu_grouped_matmul/group_list_type{group_list_type}/{_short(dtype)}",
                "npu_grouped_matmul",
                f"x ({sum(counts)}, {HIDDEN}) by {EXPERTS} x ({HIDDEN}, 128) transposed, "
                f"group_list_type={group_list_type} {_short(dtype)}", build, outputs("y"))


def _unpermute(dtype: torch.dtype) -> Case:
    tokens = 7

    def build() -> Arguments:
        g = _gen(14)
        rows = _randn(g, tokens * TOP_K, HIDDEN, dtype=dtype)
        index = torch.randperm(tokens * TOP_K, generator=g).to(torch.int32)
        probs = torch.rand(tokens, TOP_K, generator=g).to(dtype)
        return (rows, index, probs), {}

    return Case(f"npu_moe_token_unpermute/{_short(dtype)}", "npu_moe_token_unpermute",
                f"rows ({tokens * TOP_K}, {HIDDEN}), probs ({tokens}, {TOP_K}) "
                f"{_short(dtype)}", build, outputs("y"))


# --- quantization -----------------------------------------------------------------------

def _quantize() -> Case:
    def build() -> Arguments:
        # static W8A8's activation step: one scale and offset for the tensor
        g = _gen(15)
        x = _randn(g, 7, HIDDEN, dtype=torch.bfloat16, scale=3.0)
        scale = torch.tensor([0.05], dtype=torch.bfloat16)
        offset = torch.tensor([3.0], dtype=torch.bfloat16)
        return (x, scale, offset, torch.qint8, -1, True), {}

    return Case("npu_quantize/bf16", "npu_quantize", f"x (7, {HIDDEN}) bf16 -> int8", build,
                outputs("y"), tolerance=ONE_STEP)


def _dynamic_quant(dtype: torch.dtype) -> Case:
    def build() -> Arguments:
        return (_randn(_gen(16), 7, HIDDEN, dtype=dtype, scale=2.0),), {}

    return Case(f"npu_dynamic_quant/{_short(dtype)}", "npu_dynamic_quant",
                f"x (7, {HIDDEN}) {_short(dtype)} -> int8", build, outputs("y", "scale"),
                tolerance=ONE_STEP)


def _quant_matmul(form: str) -> Case:
    """``static``/``dynamic``: W8A8's two steps in bfloat16; ``dynamic-fp16``;
    ``int8``: requantized output with an offset."""
    n = 128

    def build() -> Arguments:
        g = _gen(17)
        x1 = torch.randint(-128, 128, (7, HIDDEN), generator=g, dtype=torch.int8)
        # int8 [n, k] weights read as [k, n] through a transposed view
        x2 = torch.randint(-128, 128, (n, HIDDEN), generator=g, dtype=torch.int8).t()
        scale = torch.rand(n, generator=g) * 1e-4 + 1e-5
        if form == "static":
            bias = torch.randint(-20000, 20000, (n,), generator=g, dtype=torch.int32)
            return (x1, x2, scale), dict(bias=bias, output_dtype=torch.bfloat16)
        if form == "int8":
            return (x1, x2, scale * 1e-2), dict(offset=torch.tensor([3.0]))
        dtype = torch.float16 if form == "dynamic-fp16" else torch.bfloat16
        per_token = torch.rand(7, generator=g) + 0.5
        bias = _randn(g, n, dtype=dtype)
        return (x1, x2, scale), dict(pertoken_scale=per_token, bias=bias, output_dtype=dtype)

    out = {"static": "bf16", "dynamic": "bf16", "dynamic-fp16": "fp16", "int8": "int8"}[form]
    return Case(f"npu_quant_matmul/{form}", "npu_quant_matmul",
                f"int8 (7, {HIDDEN}) @ ({HIDDEN}, {n}) transposed -> {out}, {form}", build,
                outputs("y"), tolerance=ONE_STEP)


def _cases() -> list[Case]:
    cases: list[Case] = []
    for dtype in HALF:
        cases += [_rms_norm(dtype), _add_rms_norm(dtype), _swiglu(dtype), _rotary_mul(dtype),
                  _mrope(dtype), _scatter_pa_kv_cache(dtype), _prefill(dtype),
                  _chunked_prefill(dtype), _decode(dtype), _decode_out(dtype),
                  _gating(dtype, 0), _gating(dtype, 1), _init_routing(dtype, 0, None),
                  _init_routing(dtype, 1, None), _grouped_matmul(dtype, 0),
                  _grouped_matmul(dtype, 1), _unpermute(dtype), _dynamic_quant(dtype)]
    cases += [_init_routing(torch.bfloat16, 0, (2, 6)), _quantize(),
              *(_quant_matmul(form) for form in ("static", "dynamic", "dynamic-fp16", "int8"))]
    return cases


#: Every kernel call of the device check.
CASES: list[Case] = _cases()


# --- running and comparing a case ----------------------------------------------------------

def to_device(value: Any, device: str) -> Any:
    """``value`` with every tensor in it (nested in lists, tuples, dicts) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def _call(case: Case, args: tuple, kwargs: dict) -> Any:
    if case.prepare is not None:
        case.prepare(args, kwargs)
    op, _, overload = case.op.partition(".")
    launcher = getattr(npu_ops, op)
    return (getattr(launcher, overload) if overload else launcher)(*args, **kwargs)


def compare(kernel: str, label: str, got: torch.Tensor, want: torch.Tensor,
            tolerance: tuple[float, float]) -> Row:
    """One compared tensor as a row: the largest |kernel - reference| and whether
    every element is within ``tolerance`` (atol, rtol)."""
    atol, rtol = tolerance
    allowed = f"{atol:g} + {rtol:g}·|ref|"
    got = got.detach().cpu()
    if got.shape != want.shape or got.dtype != want.dtype:
        return Row(kernel, label, math.inf,
                   f"{tuple(got.shape)} {got.dtype} != {tuple(want.shape)} {want.dtype}", False)
    if not got.numel():
        return Row(kernel, label, 0.0, allowed, True)
    g, w = got.double(), want.double()
    error = (g - w).abs()
    finite = bool(torch.isfinite(g).eq(torch.isfinite(w)).all())
    worst = float(error.nan_to_num(math.inf).max())
    passed = finite and bool((error <= atol + rtol * w.abs()).all())
    return Row(kernel, label, worst, allowed, passed)


def run_case(case: Case, device: str,
             kernels: Callable[[], AbstractContextManager[Any]]) -> list[Row]:
    """The case through its reference on the host, under the kernels' rules, and
    through ``kernels()`` (torch_npu's on an NPU) on ``device``, from the same
    arguments; a row per compared tensor."""
    args, kwargs = case.build()
    placed = to_device(copy.deepcopy((args, kwargs)), device)
    with emulation.kernel_rules():
        want = case.compared(_call(case, args, kwargs), args, kwargs)
    with kernels():
        got = case.compared(_call(case, *placed), *placed)
    if set(got) != set(want):
        raise AssertionError(f"{case.name}: compared {sorted(got)}, reference {sorted(want)}")
    return [compare(f"{case.op} {name}", case.label, got[name], want[name],
                    case.tolerance_of(want[name].dtype)) for name in want]


def format_table(rows: list[Row]) -> str:
    """The rows as one fixed-width table."""
    head = ("kernel", "shape/dtype", "max error", "tolerance", "pass")
    lines = [(r.kernel, r.shape, f"{r.max_error:.3g}", r.tolerance, "yes" if r.passed else "NO")
             for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(head, *lines)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *map(line, lines)])


def covered_ops() -> Iterator[str]:
    """Every NPU op some case calls."""
    for case in CASES:
        yield case.op
        yield from case.also
