"""vLLM's own tests, run against one platform with the default model.

The conformance suites judge a platform by the harness's own checks; this mode
adds a second opinion: a subset of vLLM 0.32.0's test suite, taken from its
sdist (the wheel ships no tests), run in a subprocess whose environment
selects the platform (:meth:`Profile.process_env`), with every model the tests
name replaced by the default model (SmolLM2-135M-Instruct, a Llama), since no
model hub is reachable. Each group below is one scoreboard row ``vllm.<group>``.

The subset (see :data:`GROUPS`) keeps tests that drive the platform through
vLLM's engine, sampler and ``LLM`` API, are not tied to one model's weights,
and together take about three minutes on two cores (an engine start costs
~15 s there, so tests that build one engine each are picked sparingly):

- ``vllm.sampler``: ``tests/v1/sample/test_sampler.py``, vLLM's sampler
  (penalties, allowed tokens, bad words) on the platform's device; no engine.
- ``vllm.sampling_params``: ``tests/v1/sample/test_sampling_params_e2e.py``
  (n, penalties, stop strings and ids, detokenize, bad words, allowed tokens,
  seeds on one engine) and ``tests/samplers/test_non_finite_params.py``.
- ``vllm.llm_generate``: ``tests/entrypoints/llm/test_generate.py`` (lists of
  sampling params, priorities, ``max_model_len``, stats).
- ``vllm.llm_chat``: ``tests/entrypoints/llm/test_chat.py``: ``LLM.chat`` and
  its single BOS (SmolLM2's chat template opens with its BOS token).
- ``vllm.parallel_sampling``: ``test_parallel_sampling[True]`` of
  ``tests/v1/engine/test_llm_engine.py``: ``n`` up to 20, distinct completions.

One chosen test whose premise fails for SmolLM2's text is skipped with the
reason (:data:`MODEL_SKIPS`).

Left out: ``samplers/test_logprobs.py``, ``v1/sample/test_logprobs.py`` and
``test_logprobs_e2e.py`` (compare against a 1B model's HF run or lm-eval),
``samplers/test_ignore_eos.py`` (512 tokens in half precision: minutes here),
``samplers/test_beam_search.py`` (HF reference runs), ``samplers/test_no_bad_words.py``
(hard-codes GPT-2 token layouts), ``v1/sample/test_topk_topp_sampler.py``
(CUDA, Triton and FlashInfer kernels), ``test_engine_metrics`` (speculative
decoding, 800 tokens), ``test_chat_extra_kwargs`` (a Qwen3 thinking template),
``test_prompt_validation.py`` (two engines for what ``robustness.*`` checks;
its third test needs LLaVA), ``test_parallel_sampling[False]`` (30 s more for
the same path without prefix caching), ``v1/engine/test_async_llm.py`` and
``test_engine_core*.py`` (minutes of engines, GPU memory checks), and
``basic_correctness/`` (HF comparisons of several hub models, CUDA memory).

vLLM's ``tests/conftest.py`` imports half the test dependencies (tblib, HF
runners, media assets), so it is not loaded (``--noconftest``); this module is
also the pytest plugin (``-p vllm_harness.vllm_tests``) that provides the two
fixtures the subset uses (``vllm_runner``, ``example_prompts``), swaps models,
fills in the profile's engine settings and records each test's outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from vllm_harness import runner
from vllm_harness.declaration import Profile
from vllm_harness.judge import Cell, Results, combine, judge
from vllm_harness.models import cache_root
from vllm_harness.pytest_plugin import COMMON_ENV, DEFAULT_ENV, IN_PROCESS_ENV, is_refusal

VLLM_VERSION = "0.32.0"
SDIST = f"vllm-{VLLM_VERSION}.tar.gz"
#: Bumped when the extraction changes, so stale copies are redone.
EXTRACT_RECIPE = 1
#: A test that takes longer than this is stopped and judged failed (a hang); the
#: run as a whole gets this much per group.
GROUP_TIMEOUT = 900

# The plugin's settings, passed from run() to the pytest subprocess.
ENV_MODEL = "VLLM_HARNESS_MODEL"
ENV_DEFAULTS = "VLLM_HARNESS_ENGINE_DEFAULTS"
ENV_DTYPES = "VLLM_HARNESS_DTYPES"
ENV_OUTCOMES = "VLLM_HARNESS_OUTCOMES"


@dataclass(frozen=True)
class Group:
    """One scoreboard row: pytest node ids relative to the sdist's root."""

    title: str
    tests: tuple[str, ...]


GROUPS: dict[str, Group] = {
    "vllm.sampler": Group(
        "vLLM's sampler on the platform's device (penalties, allowed tokens, bad words)",
        ("tests/v1/sample/test_sampler.py",)),
    "vllm.sampling_params": Group(
        "SamplingParams end to end: n, penalties, stop, bad words, allowed tokens, seed",
        ("tests/v1/sample/test_sampling_params_e2e.py",
         "tests/samplers/test_non_finite_params.py")),
    "vllm.llm_generate": Group(
        "LLM.generate: lists of sampling params, priorities, max_model_len, stats",
        ("tests/entrypoints/llm/test_generate.py",)),
    "vllm.llm_chat": Group(
        "LLM.chat and its chat template tokenization",
        ("tests/entrypoints/llm/test_chat.py::test_chat",
         "tests/entrypoints/llm/test_chat.py::test_llm_chat_tokenization_no_double_bos")),
    "vllm.parallel_sampling": Group(
        "n > 1 gives n distinct completions (prefix caching on, vLLM's default)",
        ("tests/v1/engine/test_llm_engine.py::test_parallel_sampling[True]",)),
}

#: Tests whose premise does not hold for the default model, skipped with the reason.
MODEL_SKIPS: dict[str, str] = {
    "tests/v1/sample/test_sampling_params_e2e.py::test_stop":
        "assumes the 6th word of the greedy text does not occur earlier in it; "
        "SmolLM2 writes \"'m a 25-year-old male with a passion\" so the stop string "
        "'a' matches at the 2nd word (stop strings: test_stop_token_ids, sampling.stop)",
}


# --- the sdist ---------------------------------------------------------------

def sdist_path() -> Path:
    return cache_root() / "downloads" / SDIST


class _Links(HTMLParser):
    """The ``href`` of every anchor of a PEP 503 simple index page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def find_sdist_url(page: str, base_url: str, filename: str = SDIST) -> tuple[str, str | None]:
    """The URL of ``filename`` on a simple index page and its sha256 if listed."""
    parser = _Links()
    parser.feed(page)
    for href in parser.hrefs:
        url, _, fragment = urllib.parse.urljoin(base_url, href).partition("#")
        if urllib.parse.unquote(url.rsplit("/", 1)[-1]) == filename:
            digest = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
            return url, digest
    raise LookupError(f"{filename} not listed on {base_url}")


def index_urls() -> list[str]:
    """The package indexes pip uses here: its configuration, then PyPI.

    ``pip download`` cannot fetch vLLM's sdist without preparing its metadata,
    which builds vLLM, so the harness reads the index itself.
    """
    urls: list[str] = []
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls += os.environ.get(var, "").split()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                             capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key.split(".")[-1] in ("index-url", "extra-index-url"):
                urls += value.strip().strip("'\"").split()
    urls.append("https://pypi.org/simple")
    return list(dict.fromkeys(u.rstrip("/") for u in urls))


def _download_sdist(target: Path) -> None:
    errors = []
    for index in index_urls():
        page_url = f"{index}/vllm/"
        try:
            request = urllib.request.Request(page_url, headers={"Accept": "text/html"})
            with urllib.request.urlopen(request, timeout=120) as response:
                page = response.read().decode()
            url, digest = find_sdist_url(page, page_url)
            part = target.with_suffix(".part")
            sha = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=600) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    sha.update(chunk)
                    dst.write(chunk)
            if digest and sha.hexdigest() != digest:
                part.unlink()
                raise ValueError(f"sha256 mismatch for {url}")
            part.rename(target)
            return
        except (OSError, LookupError, ValueError) as e:
            errors.append(f"{page_url}: {e}")
    raise RuntimeError(f"could not download {SDIST}:\n" + "\n".join(errors))


def tests_root() -> Path:
    """A folder holding the sdist's ``tests/``, downloaded and extracted once.

    A file lock makes concurrent callers share one download and extraction.
    """
    root = cache_root() / "vllm-tests" / VLLM_VERSION
    marker = root / ".extracted.json"
    expected = {"sdist": SDIST, "recipe": EXTRACT_RECIPE}
    if marker.is_file() and json.loads(marker.read_text()) == expected:
        return root
    (cache_root() / "downloads").mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_root() / f".vllm-{VLLM_VERSION}-tests.lock")):
        if marker.is_file() and json.loads(marker.read_text()) == expected:
            return root
        if not sdist_path().is_file():
            _download_sdist(sdist_path())
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=".staging-"))
        try:
            prefix = f"vllm-{VLLM_VERSION}/tests/"
            with tarfile.open(sdist_path()) as archive:
                members = []
                for m in archive.getmembers():
                    if m.name.startswith(prefix) and (m.isfile() or m.isdir()):
                        m.name = m.name[len(prefix) - len("tests/"):]
                        members.append(m)
                archive.extractall(staging, members=members, filter="data")
            # Anchors pytest's rootdir here, away from any ini file above the cache.
            (staging / "pytest.ini").write_text("[pytest]\n")
            (staging / ".extracted.json").write_text(json.dumps(expected))
            if root.exists():
                shutil.rmtree(root)
            staging.rename(root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


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


def profile_defaults(profile: Profile) -> dict[str, Any]:
    """Engine settings every engine of the run gets unless the test sets them."""
    return {"dtype": profile.dtypes[0], **profile.engine_args()}


# --- outcomes -----------------------------------------------------------------

@dataclass
class Outcome:
    nodeid: str
    outcome: str  # passed, failed, skipped or refused
    message: str = ""


def _is_refusal(exc: BaseException) -> bool:
    """The suites' notion of a clean refusal, which must also give its reason
    (the message is all a vLLM test failure leaves for the scoreboard)."""
    return is_refusal(exc) and bool(str(exc).strip())


def merge_phases(nodeid: str, phases: list[dict[str, str]]) -> Outcome:
    """One test's outcome from its setup, call and teardown reports.

    A failure in any phase is the outcome (setup failing is an engine that did
    not start); a skip counts only when nothing failed.
    """
    for phase in phases:
        if phase["outcome"] in ("failed", "refused"):
            return Outcome(nodeid, phase["outcome"], f"{nodeid} ({phase['when']}): "
                           f"{phase['message']}")
    for phase in phases:
        if phase["outcome"] == "skipped":
            return Outcome(nodeid, "skipped", f"{nodeid}: {phase['message']}")
    return Outcome(nodeid, "passed")


def read_records(path: Path) -> list[dict[str, Any]]:
    """What the plugin wrote, one JSON object per line: a test's start, then its phases."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def outcomes_of(records: list[dict[str, Any]]) -> list[Outcome]:
    """One outcome per test from its phase records, in the order the tests ran."""
    phases: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["when"] != "start":
            phases.setdefault(record["nodeid"], []).append(record)
    return [merge_phases(nodeid, recs) for nodeid, recs in phases.items()]


def read_outcomes(path: Path) -> list[Outcome]:
    """The outcomes the plugin wrote to ``path``."""
    return outcomes_of(read_records(path))


def group_of(nodeid: str, groups: list[str]) -> str | None:
    """The group a record belongs to: a test under one of its node ids, or a file
    (a collection error) that holds one of them."""
    for group in groups:
        for test in GROUPS[group].tests:
            if (nodeid == test or nodeid.startswith((f"{test}::", f"{test}["))
                    or test.startswith(f"{nodeid}::")):
                return group
    return None


@dataclass
class GroupRun:
    outcomes: list[Outcome]
    seconds: float  # its tests' setup, call and teardown, engines included


def split_runs(records: list[dict[str, Any]], groups: list[str], code: int | None,
               out: str, timeout: float) -> dict[str, GroupRun]:
    """Each group's outcomes from one pytest run of all of them.

    When pytest died or was stopped, the test that started and never finished
    fails with the reason (or, when it died between tests, the group that ran
    last), and so does every group that reported nothing; the groups that
    finished before keep their verdicts.
    """
    by_group: dict[str, list[dict[str, Any]]] = {g: [] for g in groups}
    for record in records:
        group = group_of(record["nodeid"], groups)
        if group is not None:
            by_group[group].append(record)
    if code is None:
        reason = f"timed out after {timeout:.0f} s"
    elif code not in (0, 1):
        reason = f"pytest exited with {code}: {_tail(out)}"
    else:
        reason = "no test of the group reported (collected none?): " + _tail(out)
    unfinished = last_group = None
    if code not in (0, 1):
        started = [r["nodeid"] for r in records if r["when"] == "start"]
        finished = {r["nodeid"] for r in records if r["when"] == "teardown"}
        unfinished = next((n for n in reversed(started) if n not in finished), None)
        if unfinished is None and records:
            last_group = group_of(records[-1]["nodeid"], groups)
    runs = {}
    for group, recs in by_group.items():
        outcomes = outcomes_of(recs)
        if unfinished is not None and group_of(unfinished, [group]):
            outcomes = [o for o in outcomes if o.nodeid != unfinished]
            outcomes.append(Outcome(unfinished, "failed", f"{unfinished}: {reason}"))
        elif not outcomes or group == last_group:
            outcomes.append(Outcome(f"{group} (pytest run)", "failed", reason))
        runs[group] = GroupRun(outcomes, sum(r.get("duration", 0.0) for r in recs))
    return runs


def group_cell(outcomes: list[Outcome], claimed: bool) -> Cell:
    """A group's cell: each test judged by the claim, the worst one wins."""
    cells = []
    for o in outcomes:
        verdict = judge(claimed, o.outcome, o.message)
        cells.append(Cell(verdict.status, claimed, verdict.message, [o.nodeid]))
    return combine(cells)


# --- running ------------------------------------------------------------------

def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_pytest(cmd: list[str], cwd: Path, env: dict[str, str],
                timeout: float) -> tuple[int | None, str]:
    """Exit code (None on timeout) and output. pytest runs in its own process
    group so a hung group's engine processes are stopped with it."""
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return None, out
    return proc.returncode, out


def run_groups(profile: Profile, groups: list[str], root: Path, model: str,
               log: Path | None = None) -> dict[str, GroupRun]:
    """Run the groups' tests in one pytest subprocess with the profile's environment.

    One process for all: each pytest start imports vLLM and its test modules
    (13 s on two idle cores, twice that beside the suites). The engines' cores
    run in that process too (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the tests
    start about eight engines, and a core process of its own imports vLLM again
    for each (llm_generate and llm_chat: 103 s against 46 s on two idle cores).
    The platform's worker, runner and scheduler are the same either way, as in
    the suites (:data:`~vllm_harness.pytest_plugin.IN_PROCESS_ENV`), where the
    server runs its core apart as ``vllm serve`` does. pytest's output goes to
    ``log`` when given, for the failures' full tracebacks.
    """
    timeout = GROUP_TIMEOUT * len(groups)
    with tempfile.TemporaryDirectory(prefix="vllm-tests-") as tmp:
        outcomes_file = Path(tmp) / "outcomes.jsonl"
        env = {
            **DEFAULT_ENV,
            **os.environ,
            **COMMON_ENV,
            "TOKENIZERS_PARALLELISM": "false",
            **IN_PROCESS_ENV,
            **profile.process_env(),
            ENV_MODEL: model,
            ENV_DEFAULTS: json.dumps(profile_defaults(profile)),
            ENV_DTYPES: json.dumps(profile.dtypes),
            ENV_OUTCOMES: str(outcomes_file),
        }
        tests = [t for group in groups for t in GROUPS[group].tests]
        # A file that does not import fails its own group, not the whole run.
        cmd = [sys.executable, "-m", "pytest", "-p", "vllm_harness.vllm_tests",
               "--noconftest", "-p", "no:cacheprovider", "--rootdir", str(root),
               "-c", str(root / "pytest.ini"), "-q", "-rN", "--color=no",
               "--continue-on-collection-errors", "-o", f"timeout={GROUP_TIMEOUT}",
               "-W", "ignore::pytest.PytestUnknownMarkWarning", *tests]
        code, out = _run_pytest(cmd, root, env, timeout)
        records = read_records(outcomes_file)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(out)
    return split_runs(records, groups, code, out, timeout)


def results_path(profile: Profile, results_dir: Path) -> Path:
    return runner.results_path(results_dir, profile, "vllm-tests")


def run(profile: Profile, results_dir: Path, groups: list[str] | None = None) -> bool:
    """Run the chosen groups (all by default) against ``profile`` and write its results.

    Returns True when every verdict is ok.
    """
    from vllm_harness.models import prepare

    groups = list(groups or GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group(s) {unknown}; known: {', '.join(GROUPS)}")
    root = tests_root()
    model = str(prepare(profile.model, quiet=True))
    results = Results(column=profile.column, entry_point=profile.entry_point,
                      profile=profile.name, package=profile.package,
                      version=profile.version, hardware=profile.hardware)
    ok = True
    start = time.monotonic()
    log = results_dir / "logs" / f"{profile.file_stem}.vllm-tests.log"
    runs = run_groups(profile, groups, root, model, log=log)
    for group in groups:
        outcomes = runs[group].outcomes
        claimed = profile.claims_feature(group)
        cell = group_cell(outcomes, claimed)
        results.add(group, cell)
        ok = ok and all(judge(claimed, o.outcome, o.message).ok for o in outcomes)
        counts = {k: sum(o.outcome == k for o in outcomes)
                  for k in ("passed", "failed", "refused", "skipped")}
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        print(f"{profile.column} {group}: {cell.status} ({summary}) in "
              f"{runs[group].seconds:.0f} s"
              + (f"\n    {cell.detail}" if cell.detail else ""), flush=True)
    path = results_path(profile, results_dir)
    results.write(path)
    print(f"wrote {path}: {len(groups)} group(s) in one pytest run of "
          f"{time.monotonic() - start:.0f} s; its output is in {log}")
    return ok


# --- the pytest plugin (loaded in the subprocess with -p vllm_harness.vllm_tests) ---

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
    """Records each phase's outcome and time; refusals need the exception, not its text."""
    if not os.environ.get(ENV_OUTCOMES):
        return
    if call.excinfo is None:
        outcome, message = "passed", ""
    elif call.excinfo.errisinstance(pytest.skip.Exception):
        outcome, message = "skipped", str(call.excinfo.value)
    else:
        exc = call.excinfo.value
        outcome = "refused" if _is_refusal(exc) else "failed"
        message = call.excinfo.exconly().strip()[:500] + _raised_in(call.excinfo)
    _record({"nodeid": item.nodeid, "when": call.when, "outcome": outcome,
             "message": message, "duration": call.duration})


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A file that does not import is a failed test of its group, not a silent gap."""
    if report.failed:
        _record({"nodeid": report.nodeid, "when": "collect", "outcome": "failed",
                 "message": _tail(str(report.longrepr), 3)})


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


# --- command line ----------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    from vllm_harness.declaration import find

    parser = argparse.ArgumentParser(
        prog="python -m vllm_harness.vllm_tests",
        description=f"Run a subset of vLLM {VLLM_VERSION}'s own tests against one platform "
        "with the default model and write its results.")
    parser.add_argument("--platform", required=True,
                        help="scoreboard column: an entry point name, or name/profile")
    parser.add_argument("--results", type=Path,
                        default=Path(os.environ.get("VLLM_HARNESS_RESULTS") or ".harness-results"),
                        help="results folder (default $VLLM_HARNESS_RESULTS or ./.harness-results)")
    parser.add_argument("--groups", nargs="*", choices=sorted(GROUPS), metavar="GROUP",
                        help="groups to run (default: all): " + ", ".join(GROUPS))
    args = parser.parse_args(argv)
    sys.exit(0 if run(find(args.platform), args.results, args.groups) else 1)


if __name__ == "__main__":
    main()
