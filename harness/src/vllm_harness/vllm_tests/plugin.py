"""The pytest plugin of vLLM's tests, loaded into their subprocess with
``-p vllm_harness.vllm_tests.plugin`` in place of vLLM's ``tests/conftest.py``
(which imports half the test dependencies): it swaps the models the tests name
for the local one, fills in the profile's engine settings, provides the two
fixtures the subset uses and records each test's outcome for the runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vllm_harness.judge import exception_outcome, shorten
from vllm_harness.vllm_tests.subset import MODEL_SKIPS

# The plugin's settings, passed from the runner to the pytest subprocess.
ENV_MODEL = "VLLM_HARNESS_MODEL"
ENV_DEFAULTS = "VLLM_HARNESS_ENGINE_DEFAULTS"
ENV_DTYPES = "VLLM_HARNESS_DTYPES"
ENV_OUTCOMES = "VLLM_HARNESS_OUTCOMES"


def tail(text: str, lines: int = 15) -> str:
    """The last lines of pytest's output: where it says why it stopped."""
    return "\n".join(text.strip().splitlines()[-lines:])


# --- what the plugin changes in the tests ---------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def substitute(name: str | None, local: str) -> str | None:
    """``local`` in place of a model hub id; local paths and ``None`` unchanged."""
    if name is None or os.path.exists(name) or not _HUB_ID.match(name):
        return name
    return local


#: Engine arguments tests size for a large GPU; the profile's settings replace them.
GPU_SIZED = ("gpu_memory_utilization",)
_DTYPE_ALIASES = {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16"}


def engine_kwargs(kwargs: dict[str, Any], defaults: dict[str, Any],
                  dtypes: list[str]) -> dict[str, Any]:
    """The engine arguments a test passes, completed by the profile's settings.

    The test's own arguments win, except the ones sized for a GPU: a dtype the
    platform does not declare (tests pick ``half`` to save memory) becomes the
    profile's first, and ``gpu_memory_utilization`` (0.1 of an 80 GB GPU holds
    a 135M model; 0.1 of a simulated 1.5 GB device does not) is the profile's.
    """
    kwargs = {k: v for k, v in kwargs.items() if k not in GPU_SIZED}
    out = {**defaults, **kwargs}
    dtype = out.get("dtype", "auto")
    if dtypes and dtype != "auto" and _DTYPE_ALIASES.get(dtype, dtype) not in dtypes:
        out["dtype"] = dtypes[0]
    return out


# --- hooks and fixtures ----------------------------------------------------------

def _settings() -> tuple[str, dict[str, Any], list[str]]:
    return (os.environ[ENV_MODEL], json.loads(os.environ.get(ENV_DEFAULTS, "{}")),
            json.loads(os.environ.get(ENV_DTYPES, "[]")))


def _patch_llm() -> None:
    """Every ``LLM(...)`` a test builds gets the local model and the profile's settings."""
    from vllm.entrypoints.llm import LLM

    if getattr(LLM.__init__, "_vllm_harness", False):
        return
    original: Callable[..., None] = LLM.__init__
    local, defaults, dtypes = _settings()

    def __init__(self: LLM, model: str, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        if "tokenizer" in kwargs:
            kwargs["tokenizer"] = substitute(kwargs["tokenizer"], local)
        original(self, substitute(model, local), *args,
                 **engine_kwargs(kwargs, defaults, dtypes))

    __init__._vllm_harness = True  # type: ignore[attr-defined]
    LLM.__init__ = __init__  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(ENV_MODEL):
        _patch_llm()


def vllm_frame(frames: list[tuple[str, int, str]]) -> str:
    """Where in vLLM itself an error was raised: the innermost frame under ``vllm/``.

    Errors such as torch's "no accelerator" say nothing of which vLLM call hit
    them; the frame does. ``frames`` are (path, 1-based line, function), outermost first.
    """
    for path, line, name in reversed(frames):
        parts = Path(path).parts
        if "vllm" in parts and "tests" not in parts:
            rel = "/".join(parts[len(parts) - parts[::-1].index("vllm") - 1:])
            return f" (raised in {rel}:{line} {name})"
    return ""


def _raised_in(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return vllm_frame([(str(e.path), e.lineno + 1, e.name) for e in excinfo.traceback])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in MODEL_SKIPS:
            item.add_marker(pytest.mark.skip(reason=MODEL_SKIPS[item.nodeid]))


def _record(record: dict[str, Any]) -> None:
    path = os.environ.get(ENV_OUTCOMES)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """Marks a test as started: if pytest dies, the test it died in is known."""
    _record({"nodeid": nodeid, "when": "start"})


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Records each phase's outcome and time, read from the exception by the
    suites' rules (:func:`~vllm_harness.judge.exception_outcome`): a refusal
    keeps its reason, a failure its error and where in vLLM it was raised."""
    if not os.environ.get(ENV_OUTCOMES):
        return
    if call.excinfo is None:
        outcome, message = "passed", ""
    elif call.excinfo.errisinstance(pytest.skip.Exception):
        outcome, message = "skipped", str(call.excinfo.value)
    else:
        outcome, message = exception_outcome(call.excinfo.value)
        if outcome == "failed":
            message = shorten(message, 500) + _raised_in(call.excinfo)
    _record({"nodeid": item.nodeid, "when": call.when, "outcome": outcome,
             "message": message, "duration": call.duration})


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A file that does not import is a failed test of its group, not a silent gap."""
    if report.failed:
        _record({"nodeid": report.nodeid, "when": "collect", "outcome": "failed",
                 "message": tail(str(report.longrepr), 3)})


class VllmRunner:
    """The part of vLLM's ``tests.conftest.VllmRunner`` the subset uses.

    Same defaults (seed 0, chunked prefill off, trust_remote_code), with the
    profile's settings in place of its CUDA-minded ones; the engine core is
    shut down on exit so the next test's engine starts on a free device.
    """

    def __init__(self, model_name: str, seed: int = 0, disable_log_stats: bool = True,
                 enable_chunked_prefill: bool | None = False, **kwargs: Any) -> None:
        from vllm import LLM

        kwargs.setdefault("trust_remote_code", True)
        self.llm = LLM(model_name, seed=seed, disable_log_stats=disable_log_stats,
                       enable_chunked_prefill=enable_chunked_prefill, **kwargs)

    def generate(self, prompts: list[str], sampling_params: Any) -> list[Any]:
        return self.llm.generate(prompts, sampling_params)

    def __enter__(self) -> VllmRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        from vllm.distributed import cleanup_dist_env_and_memory

        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        cleanup_dist_env_and_memory()


@pytest.fixture(scope="session")
def vllm_runner() -> type[VllmRunner]:
    return VllmRunner


@pytest.fixture
def example_prompts(request: pytest.FixtureRequest) -> list[str]:
    """The prompts of vLLM's ``tests/prompts/example.txt``."""
    path = Path(str(request.config.rootpath)) / "tests" / "prompts" / "example.txt"
    return path.read_text().splitlines(keepends=True)
