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

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vllm_ascend.emulation import REFERENCES

#: kernels run per op name in this process (an emulated graph's replay runs its own)
launches: Counter[str] = Counter()

_emulated = True
_launchers: dict[str, Callable[..., Any]] = {}
#: > 0 while a launcher runs: the aten ops of a reference are one NPU kernel
_inside = 0
#: kernels the host stood in for (:func:`stand_in`), by aten op name
stand_ins: Counter[str] = Counter()
#: > 0 while the host stands in for one kernel: not counted op by op
_standing_in = 0
#: under emulation, the NPU graph being captured or updated sees every launch
#: (``vllm_ascend.npu_graphs``): (op name, the kernel, args, kwargs) -> result
LaunchHook = Callable[[str, Callable[..., Any], tuple, dict], Any]
_hook: LaunchHook | None = None
#: (op name, reference) -> what an emulated call runs (:func:`route`)
Router = Callable[[str, Callable[..., Any]], Callable[..., Any]]
_router: Router | None = None


def select(*, emulated: bool) -> None:
    """Route every op to the references (True) or to torch_npu (False)."""
    global _emulated
    _emulated = emulated
    _launchers.clear()


def is_emulated() -> bool:
    return _emulated


def standing_in() -> bool:
    """Whether the host is running what stands in for one kernel (:func:`stand_in`)."""
    return _standing_in > 0


def in_launch() -> bool:
    """Whether a reference is running (its aten ops are that one NPU kernel's)."""
    return _inside > 0


def set_launch_hook(hook: LaunchHook | None) -> None:
    """Hand every launch to ``hook`` instead of running it (emulation only)."""
    global _hook
    if hook is not None and not _emulated:
        raise RuntimeError("launch hooks exist for the emulated NPU only")
    _hook = hook


def route(router: Router | None) -> None:
    """Pass every emulated call through ``router(name, reference)`` (tests: through
    the op schemas torch_npu's library registers, so an argument the kernel does
    not take fails here as it would on the NPU); None: straight to the references."""
    global _router
    _router = router
    _launchers.clear()


def _target(name: str) -> Callable[..., Any]:
    if _emulated:
        return REFERENCES[name] if _router is None else _router(name, REFERENCES[name])
    op, _, overload = name.partition(".")
    target = getattr(importlib.import_module("torch_npu"), op)
    return getattr(target, overload) if overload else target


def _launcher(name: str) -> Callable[..., Any]:
    launcher = _launchers.get(name)
    if launcher is None and name.startswith("_"):
        # torch_npu's underscored helpers (a kernel's workspace size) run on the
        # host and launch nothing: not counted, not recorded into a graph
        launcher = _launchers[name] = _target(name)
    if launcher is None:
        target = _target(name)

        def kernel(*args: Any, **kwargs: Any) -> Any:
            # counted where it runs: eagerly, in a capture, in each replay of
            # an emulated graph (not where an update only reissues it)
            global _inside
            if not _inside:
                launches[name] += 1
            _inside += 1
            try:
                return target(*args, **kwargs)
            finally:
                _inside -= 1

        def launcher(*args: Any, **kwargs: Any) -> Any:
            if _hook is not None and not _inside:
                return _hook(name, kernel, args, kwargs)
            return kernel(*args, **kwargs)

        launcher.__name__ = name
        # an op's out= overload, as torch_npu spells it: npu_ops.<op>.out(...)
        if f"{name}.out" in REFERENCES:
            launcher.out = _launcher(f"{name}.out")  # type: ignore[attr-defined]
        _launchers[name] = launcher
    return launcher


def __getattr__(name: str) -> Callable[..., Any]:
    if name not in REFERENCES:
        raise AttributeError(
            f"{name} has no reference implementation in vllm_ascend.emulation; "
            "add one (and its test) before the plugin calls it")
    return _launcher(name)


@contextmanager
def stand_in(kernel: str) -> Iterator[None]:
    """The block is what the host runs for one ``aten.<kernel>`` of the NPU (a
    bfloat16 product widened to float32 where the host has no bfloat16 GEMM):
    :class:`DeviceLaunches` counts it as that one kernel. Graph capture still
    records its ops, which the replay must run."""
    global _standing_in
    if not _standing_in:
        stand_ins[kernel] += 1
    _standing_in += 1
    try:
        yield
    finally:
        _standing_in -= 1


@contextmanager
def counting() -> Iterator[Counter[str]]:
    """Count the launches inside the block: ``with counting() as c: ...``."""
    before = launches.copy()
    seen: Counter[str] = Counter()
    try:
        yield seen
    finally:
        seen.update(launches - before)


#: aten ops that allocate or describe memory without running a kernel
NO_KERNEL = {"empty", "empty_strided", "empty_like", "detach", "alias", "lift_fresh",
              "_reshape_alias", "unsqueeze_", "squeeze_", "as_strided_", "resize_"}
#: aten ops that wait for the device: a value or a data-dependent shape on the host
HOST_SYNC = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
             "unique_consecutive", "equal", "is_nonzero", "allclose", "item"}


def runs_kernel(func: Any, args: tuple, out: Any) -> bool:
    """Whether an aten op ran a kernel: not one that only allocates, nor a view.

    Ops that may alias (``to``, ``contiguous``, ``reshape``: they reach a
    dispatch mode whole under inference mode) count as views only when the
    result shares its input's memory; otherwise they copied.
    """
    if func.overloadpacket.__name__ in NO_KERNEL:
        return False
    if not func.is_view:
        return True
    return not _storages(out) <= _storages(args)


def _storages(value: Any) -> set[int]:
    """The memory of every tensor in nested tuples, lists and dicts."""
    return {t.untyped_storage().data_ptr() for t in tree_leaves(value)
            if isinstance(t, torch.Tensor)}


class DeviceLaunches(TorchDispatchMode):
    """Counts the kernels an NPU would run for the code inside it.

    Each ``npu_ops`` call is one kernel (``npu.<op>``), whatever its
    reference does on the CPU; every other aten op is one kernel
    (``aten.<op>``) unless it is a view or only allocates; what the host runs
    in place of one kernel (:func:`stand_in`) is that kernel. Ops that make the
    host wait for the device are also listed in :attr:`host_syncs`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.kernels: Counter[str] = Counter()
        self.host_syncs: Counter[str] = Counter()
        self._npu_before = launches.copy()
        self._stand_ins_before = stand_ins.copy()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace not in ("aten", "prims"):
            # vLLM's own ops (vllm::unified_attention_with_output) only wrap
            # Python code, whose ops this mode does not see: count those with
            # a mode of their own inside (see benchmarks/ascend_launches.py)
            return func(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        if not _inside and not _standing_in:
            name = func.overloadpacket.__name__
            if name in HOST_SYNC:
                self.host_syncs[f"aten.{name}"] += 1
            if runs_kernel(func, args, out):
                self.kernels[f"aten.{name}"] += 1
        return out

    def __exit__(self, *exc: object) -> None:
        for name, count in (launches - self._npu_before).items():
            self.kernels[f"npu.{name}"] += count
        for name, count in (stand_ins - self._stand_ins_before).items():
            self.kernels[f"aten.{name}"] += count
        return super().__exit__(*exc)


def count_device_launches() -> DeviceLaunches:
    """``with count_device_launches() as seen: ...``; then ``seen.kernels``."""
    return DeviceLaunches()

