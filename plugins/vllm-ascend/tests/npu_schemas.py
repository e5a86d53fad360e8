"""The op schemas torch_npu 2.13.0's library registers, and a router through them.

torch_npu registers its ops with the dispatcher from ``libtorch_npu.so``; the
schema strings it registers are in that binary, and where they disagree with
the wheel's yaml and docs, the binary is what a call meets on an NPU
(``npu_fused_infer_attention_score.out`` takes ``Tensor[] out``, not the
``attention_out=`` / ``softmax_lse=`` the yaml names). They are read out of
the wheel (fetched, never installed: see ``npu_meta``), kept in the cache, and
defined in a scratch namespace with ``torch.library``, each op implemented by
its reference; :func:`through_schemas` routes the plugin's emulated calls
(``npu_ops.route``) through them, so a keyword, type or argument count the
kernel does not take fails in the dispatcher here.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from npu_meta import _cache_dir, wheel

LIBRARY_MEMBER = "torch_npu/lib/libtorch_npu.so"
#: the scratch namespace: ``torch.ops.npu_wheel.<op>.<overload>``
NAMESPACE = "npu_wheel"
_SCHEMA = re.compile(rb"_?npu_[a-z0-9_]+(?:\.[a-z0-9_]+)?\([ -~]*?\) -> [ -~]+")


@cache
def registered_schemas() -> dict[str, str]:
    """Every NPU op schema the library registers, by ``name`` or ``name.overload``."""
    saved = _cache_dir() / f"{wheel().stem}.schemas.txt"
    if not saved.is_file():
        with zipfile.ZipFile(wheel()) as archive:
            binary = archive.read(LIBRARY_MEMBER)
        found = sorted({m.group(0).decode() for m in _SCHEMA.finditer(binary)})
        saved.write_text("\n".join(found) + "\n")
    schemas: dict[str, str] = {}
    for line in saved.read_text().splitlines():
        schemas.setdefault(line.split("(", 1)[0], line)
    return schemas


@cache
def _library() -> torch.library.Library:
    return torch.library.Library(NAMESPACE, "DEF")


@cache
def schema_op(name: str) -> Any:
    """``name`` as the library registers it, run by its reference."""
    from vllm_ascend.emulation import REFERENCES

    schema = registered_schemas().get(name)
    if schema is None:
        raise AssertionError(f"torch_npu 2.13.0 registers no op {name}")
    library = _library()
    library.define(schema)
    library.impl(name, REFERENCES[name], "CompositeExplicitAutograd")
    op, _, overload = name.partition(".")
    return getattr(getattr(torch.ops, NAMESPACE), op).__getattr__(overload or "default")


def through_schemas(name: str, reference: Callable[..., Any]) -> Callable[..., Any]:
    """A router for ``npu_ops.route``: the call goes through the registered schema
    to ``reference``."""
    op = schema_op(name)

    def call(*args: Any, **kwargs: Any) -> Any:
        return op(*args, **kwargs)

    call.__name__ = name
    return call
