"""The one door through which the plugin launches NPU ops.

Code elsewhere in the plugin writes ``npu_ops.npu_rms_norm(x, w, eps)``,
never ``torch_npu.npu_rms_norm``: on an NPU the call goes to torch_npu's
kernel, under emulation to the reference in :mod:`vllm_ascend.emulation`.
Only ops with a reference exist here, so a new NPU op cannot be used before
it can be checked on the CPU. Every launch is counted in :data:`launches`.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from vllm_ascend.emulation import REFERENCES

#: launches per op name, in this process, since the last :func:`counting`
launches: Counter[str] = Counter()

_emulated = True
_launchers: dict[str, Callable[..., Any]] = {}


def select(*, emulated: bool) -> None:
    """Route every op to the references (True) or to torch_npu (False)."""
    global _emulated
    _emulated = emulated
    _launchers.clear()


def is_emulated() -> bool:
    return _emulated


def _target(name: str) -> Callable[..., Any]:
    if _emulated:
        return REFERENCES[name]
    return getattr(importlib.import_module("torch_npu"), name)


def __getattr__(name: str) -> Callable[..., Any]:
    if name not in REFERENCES:
        raise AttributeError(
            f"{name} has no reference implementation in vllm_ascend.emulation; "
            "add one (and its test) before the plugin calls it")
    launcher = _launchers.get(name)
    if launcher is None:
        target = _target(name)

        def launcher(*args: Any, **kwargs: Any) -> Any:
            launches[name] += 1
            return target(*args, **kwargs)

        launcher.__name__ = name
        _launchers[name] = launcher
    return launcher


@contextmanager
def counting() -> Iterator[Counter[str]]:
    """Count the launches inside the block: ``with counting() as c: ...``."""
    before = launches.copy()
    seen: Counter[str] = Counter()
    try:
        yield seen
    finally:
        seen.update(launches - before)
