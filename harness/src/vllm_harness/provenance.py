"""How a run was made: the stack, the commit, the date and the machine.

Every results file carries this record, and the scoreboard's JSON keeps it per
column, so a verdict can be traced to the code and the machine that gave it (a
speed or a rounding holds for the machine it was seen on). The scoreboard check
compares verdicts, not records: a later run on another machine or commit that
finds the same verdicts leaves the scoreboard current.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

#: The instruction sets that decide which GEMM and attention paths a CPU takes.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
#: Set by a caller that runs the harness outside the repository's checkout.
COMMIT_ENV = "VLLM_HARNESS_COMMIT"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def commit(where: Path | None = None) -> str:
    """The checkout's commit (``+dirty`` when tracked files differ from it), or
    ``$VLLM_HARNESS_COMMIT``, or "unknown" outside a git checkout."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    cwd = str(where or Path.cwd())
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=cwd,
                               capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine(cpuinfo: str | None = None) -> str:
    """The CPU as people name machine kinds here: model, family/model numbers,
    cores, the instruction sets that matter, memory."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    name = fields.get("model name") or platform.processor() or platform.machine()
    ids = (f" (family {fields['cpu family']} model {fields['model']})"
           if "cpu family" in fields and "model" in fields else "")
    flags = set(fields.get("flags", "").split())
    isa = ", ".join(f for f in ISA_FLAGS if f in flags) or "no AVX2"
    cores = os.cpu_count() or 0
    try:
        memory = f", {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"
    except (OSError, ValueError):
        memory = ""
    return f"{name}{ids}, {cores} cores, {isa}{memory}"


def record() -> dict[str, str]:
    """This run's record, as the results files and the scoreboard's JSON keep it."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit(),
        "machine": machine(),
        "python": platform.python_version(),
        "vllm": _version("vllm"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "harness": _version("vllm-harness"),
    }
