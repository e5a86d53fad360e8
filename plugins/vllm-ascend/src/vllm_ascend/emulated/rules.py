"""What the references refuse beyond their own checks: the arguments the plugin does
not use, and the one relaxation (float32 where a kernel takes float16/bfloat16 only)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def unsupported(op: str, **given: Any) -> None:
    used = [name for name, value in given.items()
            if value is not None and value is not False and value != []]
    if used:
        raise NotImplementedError(f"{op}: the emulation does not implement {', '.join(used)}")


#: The one way the references take more than the kernels: float32 where a kernel
#: takes only float16/bfloat16, so that the emulated platform's float32 runs hold
#: the plugin to transformers' float32 tokens exactly. On under emulation (every
#: call it lets through is counted in :data:`relaxed`); off inside
#: :func:`kernel_rules`, which the device check's calls are held to.
FLOAT32_RELAXATION = "float32 relaxation"
_float32_relaxed = True
#: calls accepted only through the float32 relaxation, by op
relaxed: Counter[str] = Counter()


@contextmanager
def kernel_rules() -> Iterator[None]:
    """Inside the block the references take only what the kernels take (no float32
    relaxation): what a call must satisfy to run on an NPU."""
    global _float32_relaxed
    before, _float32_relaxed = _float32_relaxed, False
    try:
        yield
    finally:
        _float32_relaxed = before


def float32_relaxation(op: str, what: str) -> None:
    """A float32 ``what`` the kernel does not take: accepted (and counted) only
    under the relaxation."""
    if not _float32_relaxed:
        raise ValueError(f"{op}: the kernel takes no float32 {what} (taken only under the "
                         f"emulation's {FLOAT32_RELAXATION}, off here)")
    relaxed[op] += 1
