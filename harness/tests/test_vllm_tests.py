"""The pure logic of the "vLLM's own tests" mode: no engine, no pytest subprocess."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from pydantic.dataclasses import dataclass

from vllm_harness import vllm_tests
from vllm_harness.declaration import parse
from vllm_harness.judge import FAIL, PASS, REFUSED, SKIPPED, Results, is_refusal
from vllm_harness.vllm_tests import (
    GROUPS,
    Outcome,
    engine_kwargs,
    find_sdist_url,
    group_cell,
    group_of,
    merge_phases,
    read_outcomes,
    substitute,
)
from vllm_harness.vllm_tests import plugin as vllm_plugin


def test_substitute_replaces_hub_ids_only(tmp_path: Path) -> None:
    local = "/models/smol"
    assert substitute("distilbert/distilgpt2", local) == local
    assert substitute("meta-llama/Llama-3.2-1B-Instruct", local) == local
    assert substitute(None, local) is None
    assert substitute(str(tmp_path), local) == str(tmp_path)  # an existing directory
    assert substitute("not a model id", local) == "not a model id"


def test_engine_kwargs_test_wins_but_gpu_sizing_goes() -> None:
    defaults = {"dtype": "float32", "max_model_len": 512, "block_size": 16}
    out = engine_kwargs({"max_model_len": 20, "gpu_memory_utilization": 0.1,
                         "enforce_eager": True}, defaults, ["float32", "bfloat16"])
    assert out == {"dtype": "float32", "max_model_len": 20, "block_size": 16,
                   "enforce_eager": True}


@pytest.mark.parametrize(("asked", "expected"), [
    ("half", "float32"), ("float16", "float32"), ("bfloat16", "bfloat16"),
    ("bf16", "bf16"), ("auto", "auto")])
def test_engine_kwargs_dtype_outside_the_profile_becomes_its_first(asked: str,
                                                                   expected: str) -> None:
    out = engine_kwargs({"dtype": asked}, {"dtype": "float32"}, ["float32", "bfloat16"])
    assert out["dtype"] == expected


def test_find_sdist_url_resolves_relative_links_and_hash() -> None:
    page = """<html><body>
    <a href="../../packages/vllm-0.31.0.tar.gz#sha256=aa">vllm-0.31.0.tar.gz</a>
    <a href="../../packages/ab/vllm-0.32.0-cp38-abi3-manylinux.whl#sha256=bb">w</a>
    <a href="../../packages/cd/vllm-0.32.0.tar.gz#sha256=cc" data-requires-python="&gt;=3.10">s</a>
    </body></html>"""
    url, digest = find_sdist_url(page, "https://example.org/simple/vllm/")
    assert url == "https://example.org/packages/cd/vllm-0.32.0.tar.gz"
    assert digest == "cc"
    with pytest.raises(LookupError):
        find_sdist_url(page, "https://example.org/simple/vllm/", "vllm-9.tar.gz")


def test_merge_phases_failure_beats_skip_and_names_the_phase() -> None:
    assert merge_phases("t", [{"when": "call", "outcome": "passed", "message": ""}]) \
        == Outcome("t", "passed")
    teardown = merge_phases("t", [
        {"when": "call", "outcome": "passed", "message": ""},
        {"when": "teardown", "outcome": "failed", "message": "RuntimeError: boom"}])
    assert teardown == Outcome("t", "failed", "t (teardown): RuntimeError: boom")
    skipped = merge_phases("t", [{"when": "setup", "outcome": "skipped", "message": "why"}])
    assert skipped == Outcome("t", "skipped", "t: why")


def test_read_outcomes_groups_phases_by_test(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    records = [
        {"nodeid": "a", "when": "call", "outcome": "passed", "message": ""},
        {"nodeid": "b", "when": "setup", "outcome": "refused", "message": "ValueError: no"},
        {"nodeid": "a", "when": "teardown", "outcome": "failed", "message": "E"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_outcomes(path) == [Outcome("a", "failed", "a (teardown): E"),
                                   Outcome("b", "refused", "b (setup): ValueError: no")]
    assert read_outcomes(tmp_path / "missing.jsonl") == []


def test_group_of_matches_tests_and_the_files_that_hold_them() -> None:
    groups = list(GROUPS)
    assert group_of("tests/v1/sample/test_sampler.py::test_x[cpu-1]", groups) == "vllm.sampler"
    assert group_of("tests/entrypoints/llm/test_chat.py::test_chat", groups) == "vllm.llm_chat"
    # a collection error is reported on the file
    assert group_of("tests/entrypoints/llm/test_chat.py", groups) == "vllm.llm_chat"
    assert group_of("tests/v1/engine/test_llm_engine.py::test_parallel_sampling[True]",
                    groups) == "vllm.parallel_sampling"
    assert group_of("tests/v1/engine/test_llm_engine.py::test_parallel_sampling[False]",
                    groups) is None
    assert group_of("tests/entrypoints/llm/test_chat.py::test_chat_extra_kwargs",
                    groups) is None
    assert group_of("tests/v1/sample/test_sampler.py", ["vllm.llm_chat"]) is None


def _phases(nodeid: str, *outcomes: str, duration: float = 1.0) -> list[dict[str, object]]:
    records: list[dict[str, object]] = [{"nodeid": nodeid, "when": "start"}]
    for when, outcome in zip(("setup", "call", "teardown"), outcomes, strict=False):
        records.append({"nodeid": nodeid, "when": when, "outcome": outcome,
                        "message": "E" if outcome != "passed" else "", "duration": duration})
    return records


SAMPLER = "tests/v1/sample/test_sampler.py::test_a"
CHAT = "tests/entrypoints/llm/test_chat.py::test_chat"
BOS = "tests/entrypoints/llm/test_chat.py::test_llm_chat_tokenization_no_double_bos"


def test_split_runs_gives_each_group_its_outcomes_and_time() -> None:
    records = (_phases(SAMPLER, "passed", "passed", "passed", duration=2.0)
               + _phases(CHAT, "passed", "refused", "passed", duration=5.0))
    runs = vllm_tests.split_runs(records, ["vllm.sampler", "vllm.llm_chat"], 1, "", 60)
    assert runs["vllm.sampler"].outcomes == [Outcome(SAMPLER, "passed")]
    assert runs["vllm.sampler"].seconds == 6.0
    assert runs["vllm.llm_chat"].outcomes == [Outcome(CHAT, "refused", f"{CHAT} (call): E")]
    assert runs["vllm.llm_chat"].seconds == 15.0


def test_split_runs_blames_the_unfinished_test_and_the_groups_never_run() -> None:
    groups = ["vllm.sampler", "vllm.llm_chat", "vllm.parallel_sampling"]
    # pytest died (code -11) inside the chat group's second test
    records = (_phases(SAMPLER, "passed", "passed", "passed")
               + _phases(CHAT, "passed", "passed", "passed") + _phases(BOS, "passed"))
    runs = vllm_tests.split_runs(records, groups, -11, "Fatal Python error", 60)
    assert runs["vllm.sampler"].outcomes == [Outcome(SAMPLER, "passed")]
    chat = runs["vllm.llm_chat"].outcomes
    assert chat[0] == Outcome(CHAT, "passed")
    assert chat[1].nodeid == BOS and chat[1].outcome == "failed"
    assert "exited with -11" in chat[1].message and "Fatal Python error" in chat[1].message
    never = runs["vllm.parallel_sampling"].outcomes
    assert [o.outcome for o in never] == ["failed"] and "exited with -11" in never[0].message
    # a stopped run says so
    stopped = vllm_tests.split_runs(records, groups, None, "", 4500)
    assert "timed out after 4500 s" in stopped["vllm.llm_chat"].outcomes[1].message
    # dying between tests (after the sampler's last teardown) fails the group that ran last
    between = vllm_tests.split_runs(records[:4], groups, -11, "Fatal Python error", 60)
    assert between["vllm.sampler"].outcomes[0] == Outcome(SAMPLER, "passed")
    assert [o.nodeid for o in between["vllm.sampler"].outcomes[1:]] == \
        ["vllm.sampler (pytest run)"]
    assert "exited with -11" in between["vllm.sampler"].outcomes[1].message
    # a clean exit with nothing from a group is a failure of that group, not a pass
    clean = vllm_tests.split_runs(records[:4], groups, 0, "no tests ran", 60)
    assert clean["vllm.sampler"].outcomes == [Outcome(SAMPLER, "passed")]
    assert clean["vllm.llm_chat"].outcomes[0].outcome == "failed"


def test_group_cell_judges_by_claim() -> None:
    outcomes = [Outcome("x", "passed"), Outcome("y", "skipped", "y: reason"),
                Outcome("z", "failed", "z (call): AssertionError: assert 1 == 5")]
    cell = group_cell(outcomes, claimed=True)
    assert cell.status == FAIL and "z (call): AssertionError" in cell.detail
    assert cell.tests == ["x", "y", "z"]
    assert group_cell(outcomes[:2], claimed=True).status == PASS
    assert group_cell(outcomes[1:2], claimed=True).status == SKIPPED
    refused = group_cell([Outcome("r", "refused", "r: ValueError: fp16")], claimed=False)
    assert refused.status == REFUSED and not refused.claimed


def test_is_refusal_needs_a_clean_exception_with_a_reason() -> None:
    assert is_refusal(ValueError("dtype float16 is not supported"))
    assert is_refusal(NotImplementedError("no beam search"))
    assert not is_refusal(ValueError(""))
    assert not is_refusal(NotImplementedError())
    assert not is_refusal(RuntimeError("crash"))
    assert not is_refusal(AssertionError("wrong"))


REASON = ("spyre_like continuous batching prefills each prompt in one step, so "
          "max_num_batched_tokens=64 must be at least max_model_len=512")


@dataclass
class VllmConfig:
    """Fails as vLLM's own config does: a pydantic dataclass whose check raises
    ValueError, which pydantic wraps in "1 validation error for VllmConfig"."""

    max_num_batched_tokens: int = 64

    def __post_init__(self) -> None:
        raise ValueError(REASON)


def _raise(exc: BaseException) -> None:
    raise exc


def _record_phase(nodeid: str, when: Literal["setup", "call", "teardown"],
                  func: Callable[[], object]) -> None:
    """What the subprocess's plugin records for one phase that runs ``func``."""
    item: Any = SimpleNamespace(nodeid=nodeid)
    vllm_plugin.pytest_runtest_makereport(item, pytest.CallInfo.from_call(func, when))


def test_record_keeps_the_refusal_reason_inside_pydantic_wrapping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "o.jsonl"
    monkeypatch.setenv(vllm_plugin.ENV_OUTCOMES, str(path))
    test = "tests/entrypoints/llm/test_generate.py::test_max_model_len"
    _record_phase(test, "setup", lambda: None)
    _record_phase(test, "call", VllmConfig)
    with pytest.raises(ValueError, match="1 validation error for VllmConfig"):
        VllmConfig()  # the wrapping is there, and the record sees through it
    [outcome] = read_outcomes(path)
    assert outcome == Outcome(test, "refused", f"{test} (call): {REASON}")
    cell = group_cell([outcome], claimed=False)
    assert cell.status == REFUSED and cell.detail == f"{test} (call): {REASON}"


def test_record_of_a_failure_names_the_error_cut_at_a_word(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "o.jsonl"
    monkeypatch.setenv(vllm_plugin.ENV_OUTCOMES, str(path))
    _record_phase("t", "call", lambda: _raise(RuntimeError("word " * 200)))
    _record_phase("e", "call", lambda: _raise(ValueError("")))  # no reason: no refusal
    failed, empty = read_outcomes(path)
    assert failed.outcome == "failed"
    assert failed.message.startswith("t (call): RuntimeError: word word")
    assert failed.message.endswith(" word…") and len(failed.message) <= len("t (call): ") + 500
    assert empty == Outcome("e", "failed", "e (call): ValueError:")


def test_groups_name_vllm_features_and_files() -> None:
    assert all(g.startswith("vllm.") for g in GROUPS)
    for group in GROUPS.values():
        assert group.tests and all(t.startswith("tests/") for t in group.tests)
    assert all(n.split("::")[0].startswith("tests/") for n in vllm_tests.MODEL_SKIPS)


def _fake_sdist(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, text in [(f"vllm-{vllm_tests.VLLM_VERSION}/tests/test_a.py", "x = 1\n"),
                           (f"vllm-{vllm_tests.VLLM_VERSION}/vllm/__init__.py", "")]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_tests_root_extracts_only_tests_once(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_PLUGINS_CACHE", str(tmp_path))
    _fake_sdist(vllm_tests.sdist_path())
    assert vllm_tests.sdist_path() == tmp_path / "downloads" / vllm_tests.SDIST
    root = vllm_tests.tests_root()
    assert (root / "tests" / "test_a.py").read_text() == "x = 1\n"
    assert not (root / "vllm").exists()
    assert (root / "pytest.ini").is_file()
    (root / "tests" / "test_a.py").write_text("changed\n")
    assert vllm_tests.tests_root() == root  # the marker stops a second extraction
    assert (root / "tests" / "test_a.py").read_text() == "changed\n"


def test_run_writes_one_cell_per_group(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    profile = parse({"schema": 1, "platform": {
        "class": "x.P", "hardware": "emulated", "active_by_default": False,
        "activation_log": "on"}, "features": {"claims": ["vllm.sampler"]}},
        "fake", "vllm-fake", "1.0", "test")[0]
    outcomes = {"vllm.sampler": [Outcome("s", "passed")],
                "vllm.llm_chat": [Outcome("c", "refused", "c (call): ValueError: no chat")]}
    monkeypatch.setattr(vllm_tests.runner, "tests_root", lambda: tmp_path)
    monkeypatch.setattr("vllm_harness.models.prepare", lambda *a, **k: tmp_path)
    monkeypatch.setattr(vllm_tests.runner, "run_groups",
                        lambda profile, groups, root, model, log: {
                            g: vllm_tests.GroupRun(outcomes[g], 1.0) for g in groups})
    assert vllm_tests.run(profile, tmp_path, ["vllm.sampler", "vllm.llm_chat"])
    results = Results.read(tmp_path / "fake.vllm-tests.json")
    assert results.package == "vllm-fake" and results.hardware == "emulated"
    assert results.features["vllm.sampler"].status == PASS
    assert results.features["vllm.llm_chat"].status == REFUSED
    with pytest.raises(ValueError, match="unknown group"):
        vllm_tests.run(profile, tmp_path, ["vllm.nope"])


def test_vllm_frame_is_the_innermost_frame_inside_vllm() -> None:
    site = "/venv/lib/python3.11/site-packages"
    frames = [("/cache/vllm-tests/0.32.0/tests/entrypoints/llm/test_chat.py", 14, "text_llm"),
              (f"{site}/vllm/distributed/parallel_state.py", 1781, "cleanup"),
              (f"{site}/torch/accelerator/memory.py", 30, "empty_cache")]
    assert vllm_tests.vllm_frame(frames) == \
        " (raised in vllm/distributed/parallel_state.py:1781 cleanup)"
    assert vllm_tests.vllm_frame(frames[:1]) == ""


def test_run_pytest_stops_a_hung_group_with_its_children(tmp_path: Path) -> None:
    script = ("import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print('started', flush=True)\n"
              "time.sleep(60)\n")
    start = time.monotonic()
    code, out = vllm_tests.runner._run_pytest([sys.executable, "-c", script], tmp_path,
                                       dict(os.environ), timeout=3)
    assert code is None and "started" in out
    assert time.monotonic() - start < 30  # communicate() returned: the child died too
    assert vllm_tests.runner._run_pytest([sys.executable, "-c", "print('hi')"], tmp_path,
                                  dict(os.environ), timeout=30) == (0, "hi\n")
