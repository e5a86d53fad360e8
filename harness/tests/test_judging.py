"""The judging rules, the declaration schema and the scoreboard, without an engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vllm_harness import scoreboard
from vllm_harness.declaration import DeclarationError, parse
from vllm_harness.features import FEATURES, expand
from vllm_harness.judge import (
    COULD_CLAIM,
    FAIL,
    PASS,
    REFUSED,
    SKIPPED,
    Cell,
    Results,
    combine,
    exception_outcome,
    is_refusal,
    judge,
    refusal_reason,
    shorten,
)

BASE = {
    "schema": 1,
    "platform": {"class": "pkg.platform.P", "hardware": "emulated",
                 "active_by_default": False, "activation_log": "P is on"},
    "engine": {"dtypes": ["float32"], "block_size": 64},
    "features": {"claims": ["registration.*", "correctness.greedy_fp32"]},
}


@pytest.mark.parametrize(("claimed", "outcome", "status", "ok"), [
    (True, "passed", PASS, True),
    (True, "failed", FAIL, False),
    (True, "refused", FAIL, False),
    (True, "skipped", SKIPPED, True),
    (False, "passed", COULD_CLAIM, True),
    (False, "refused", REFUSED, True),
    (False, "failed", FAIL, False),
    (False, "skipped", SKIPPED, True),
])
def test_verdicts(claimed, outcome, status, ok):
    verdict = judge(claimed, outcome, "why")
    assert (verdict.status, verdict.ok) == (status, ok)


def test_refusal_without_reason_is_a_failure():
    assert judge(False, "refused", "  ").status == FAIL


def test_claimed_failure_keeps_the_difference():
    verdict = judge(True, "failed", "AssertionError: got 3, want 4")
    assert verdict.message == "claimed, but AssertionError: got 3, want 4"


def test_worst_test_decides_the_feature():
    cells = [Cell(PASS, True, "", ["a"]), Cell(FAIL, True, "bad", ["b"]),
             Cell(SKIPPED, True, "later", ["c"])]
    got = combine(cells)
    assert (got.status, got.detail, got.tests) == (FAIL, "bad", ["a", "b", "c"])
    assert combine([Cell(SKIPPED, False), Cell(COULD_CLAIM, False)]).status == COULD_CLAIM


def test_reasons_join_in_the_order_of_the_tests_not_of_their_ending():
    served, offline = Cell(REFUSED, False, "400: no", ["t_served"]), \
        Cell(REFUSED, False, "no", ["t_offline"])
    assert combine([served, offline]).detail == combine([offline, served]).detail == "no; 400: no"


def test_expand_suites_and_reject_unknown():
    assert expand(["sampling.*"], "x") == {f for f in FEATURES if f.startswith("sampling.")}
    assert expand(["vllm.anything"], "x") == {"vllm.anything"}
    with pytest.raises(ValueError, match=r"unknown feature 'sampling\.nope'"):
        expand(["sampling.nope"], "where")


def test_profiles_merge_over_the_base():
    data = dict(BASE, profiles={
        "static": {"engine": {"block_size": 128}, "features": {"claims": ["server.*"]}},
        "paged": {"engine": {"model": "moe"}},
    })
    static, paged = parse(data, "p", "vllm-p", "1.0", "test")
    assert (static.column, static.block_size, paged.block_size) == ("p/static", 128, 64)
    assert (static.model, paged.model) == ("full", "moe")
    assert static.suites == paged.suites == ["registration", "correctness", "sampling", "engine",
                                             "inputs", "server", "robustness", "structured",
                                             "lora", "tools", "model", "pooling",
                                             "spec_decode", "parallel"]
    data["profiles"]["paged"]["suites"] = ["server", "registration", "correctness"]
    paged = parse(data, "p", "vllm-p", "1.0", "test")[1]
    assert paged.suites == ["registration", "correctness", "server"]  # in the suites' order
    assert static.claims_feature("server.chat")
    assert not static.claims_feature("registration.default")
    assert paged.claims_feature("registration.default") and paged.dtypes == ["float32"]
    assert static.process_env() == {"VLLM_PLUGINS": "p"}


def test_model_from_names_a_function_and_its_arguments():
    data = dict(BASE, profiles={
        "plain": {},
        "short": {"engine": {"model_from": "pkg.tool:write"}},
        "table": {"engine": {"model_from": {"call": "pkg.tool:write",
                                            "args": {"scheme": "W8A8"}}}},
    })
    plain, short, table = parse(data, "p", "vllm-p", "1.0", "test")
    assert (plain.model_from, plain.model_name) == ("", "full")
    assert plain.runs_default_model and not short.runs_default_model
    assert (short.model_from, short.model_from_args) == ("pkg.tool:write", {})
    assert (table.model_from_args, table.model_name) == ({"scheme": "W8A8"},
                                                         "full via pkg.tool:write")


@pytest.mark.parametrize(("change", "message"), [
    ({"schema": 2}, "schema = 1 expected"),
    ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ({"platform": {"class": "x"}}, "hardware is required"),
    ({"platform": dict(BASE["platform"], hardware="npu")}, "hardware must be one of"),
    ({"engine": {"blocksize": 16}}, r"\[engine\]: unknown key"),
    ({"engine": {"model": "gpt-5"}}, r"model: 'gpt-5' is not a harness model"),
    ({"engine": {"model_from": "pkg.tool"}}, r"model_from: 'pkg.tool' is not \"module:function"),
    ({"engine": {"model_from": {"call": "pkg:f", "kwargs": {}}}}, r"unknown key\(s\) \['kwargs'\]"),
    ({"engine": {"model_from": {"call": "pkg:f", "args": {"n": 1}}}}, "must be a table of strings"),
    ({"profiles": {"m": {"suites": ["speed"]}}}, r"unknown suite\(s\) \['speed'\]"),
    ({"profiles": {"m": {"suites": ["server"]}}},
     r"claims \['correctness.greedy_fp32', 'registration.default', 'registration.entry_point', "
     r"'registration.selected'\] of suites"),  # the server suite judges the activation log
    ({"profiles": {"m": {"suites": ["registration", "correctness"]}}},
     r"claims \['registration.activation_log'\] of suites"),
    ({"features": {"claims": ["robustness.unservable"]}}, "names no .* unservable_request"),
    ({"engine": {"unservable_request": {"prompt_tokens": 9}}}, "needs prompt_tokens and max"),
    ({"features": {"claims": ["sampling.*"], "not_observable": {"sampling.n": "x"}}},
     "both claimed and declared not observable"),
])
def test_bad_declarations_are_named(change, message):
    with pytest.raises(DeclarationError, match=message):
        parse(dict(BASE, **change), "p", "vllm-p", "1.0", "vllm-p (p/capabilities.toml)")


def _results(column: str, **cells: Cell) -> Results:
    r = Results(column=column, entry_point=column, profile="default", package=f"vllm-{column}",
                version="0.1.0", hardware="emulated")
    for feature, cell in cells.items():
        r.add(feature.replace("__", "."), cell)
    return r


def test_scoreboard_merges_parts_and_renders(tmp_path: Path):
    _results("b", registration__selected=Cell(PASS, True)).write(tmp_path / "b.suite.json")
    _results("a", server__chat=Cell(FAIL, True, "claimed, but no Paris")).write(
        tmp_path / "a.suite.json")
    _results("a", **{"vllm__sampling_params": Cell(COULD_CLAIM, False)}).write(
        tmp_path / "a.vllm-tests.json")
    columns = scoreboard.collect(tmp_path)
    assert list(columns) == ["a", "b"]
    assert set(columns["a"].features) == {"server.chat", "vllm.sampling_params"}
    table = scoreboard.markdown(columns)
    assert "| **server** |" in table and "❌ fail · emu" in table and "➕ could claim ⁿ" in table
    assert "- `a` server.chat, fail: claimed, but no Paris" in table
    assert table.index("registration.selected") < table.index("server.chat")


def test_scoreboard_check_names_stale_cells(tmp_path: Path):
    _results("a", server__chat=Cell(PASS, True)).write(tmp_path / "r" / "a.suite.json")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{scoreboard.START}\nold\n{scoreboard.END}\n\nafter\n")
    out = tmp_path / "scoreboard.json"
    columns = scoreboard.collect(tmp_path / "r")
    with pytest.raises(scoreboard.StaleError, match="is missing"):
        scoreboard.check(columns, readme, out)
    scoreboard.write(columns, readme, out)
    scoreboard.check(columns, readme, out)
    assert readme.read_text().endswith("\n\nafter\n")
    assert json.loads(out.read_text())["columns"]["a"]["features"]["server.chat"]["status"] == PASS
    _results("a", server__chat=Cell(FAIL, True, "x")).write(tmp_path / "r" / "a.suite.json")
    with pytest.raises(scoreboard.StaleError, match=r"a server\.chat: checked in pass, "
                                                    r"results say fail"):
        scoreboard.check(scoreboard.collect(tmp_path / "r"), readme, out)


def test_scoreboard_keeps_each_columns_run_and_checks_verdicts_only(tmp_path: Path):
    suite = _results("a", server__chat=Cell(PASS, True))
    suite.run = {"date": "2026-12-08T01:00:00Z", "commit": "abc", "machine": "m1"}
    suite.write(tmp_path / "r" / "a.suite.json")
    tests = _results("a", vllm__sampler=Cell(PASS, True))
    tests.run = {"date": "2026-12-08T01:05:00Z", "commit": "abc", "machine": "m1"}
    tests.write(tmp_path / "r" / "a.vllm-tests.json")
    readme, out = tmp_path / "README.md", tmp_path / "scoreboard.json"
    readme.write_text(f"{scoreboard.START}\n{scoreboard.END}\n")
    scoreboard.write(scoreboard.collect(tmp_path / "r"), readme, out)
    # the latest part's record stands for the column
    assert json.loads(out.read_text())["columns"]["a"]["run"]["date"] == "2026-12-08T01:05:00Z"
    # another commit and machine with the same verdicts: still current
    for path in (tmp_path / "r").glob("*.json"):
        part = Results.read(path)
        part.run = {"date": "2026-12-09T00:00:00Z", "commit": "def", "machine": "m2"}
        part.write(path)
    scoreboard.check(scoreboard.collect(tmp_path / "r"), readme, out)


def test_provenance_names_the_machine_and_the_stack():
    from vllm_harness import provenance

    cpuinfo = ("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 23\nmodel\t\t: 49\n"
               "flags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n")
    assert provenance.machine(cpuinfo).startswith("AMD EPYC (family 23 model 49), ")
    assert ", avx2" in provenance.machine(cpuinfo) and "avx512f" not in provenance.machine(cpuinfo)
    record = provenance.record()
    assert set(record) >= {"date", "commit", "machine", "vllm", "torch"}
    assert record["commit"] != "", record


def test_scoreboard_needs_its_markers(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(scoreboard.StaleError, match="no <!-- scoreboard:start -->"):
        scoreboard.write({"a": _results("a")}, readme, tmp_path / "s.json")


def test_refusal_reason_drops_pydantic_wrapping():
    from pydantic import BaseModel, field_validator

    class Config(BaseModel):
        dtype: str

        @field_validator("dtype")
        @classmethod
        def known(cls, value: str) -> str:
            raise ValueError(f"p does not support dtype={value}; use float32")

    with pytest.raises(ValueError) as info:
        Config(dtype="float16")
    assert is_refusal(info.value)
    assert refusal_reason(info.value) == "p does not support dtype=float16; use float32"
    assert refusal_reason(NotImplementedError("no\n  sliding window")) == "no sliding window"


REASON = ("spyre_like continuous batching prefills each prompt in one step, so "
          "max_num_batched_tokens=64 must be at least max_model_len=512")


def _vllm_config_error() -> ValueError:
    """What vLLM raises for a config a platform refuses: its config classes are
    pydantic dataclasses, so the platform's ValueError arrives wrapped."""
    from pydantic.dataclasses import dataclass

    @dataclass
    class VllmConfig:
        max_num_batched_tokens: int = 64

        def __post_init__(self) -> None:
            raise ValueError(REASON)

    with pytest.raises(ValueError) as info:
        VllmConfig()
    assert str(info.value).startswith("1 validation error for VllmConfig\n  Value error, ")
    return info.value


def test_suites_record_the_reason_inside_pydantic_wrapping():
    from vllm_harness.pytest_plugin import _raw_outcome

    exc = _vllm_config_error()
    assert exception_outcome(exc) == ("refused", REASON)
    report: Any = SimpleNamespace(skipped=False, passed=False, longrepr="E   ...")
    call: Any = SimpleNamespace(excinfo=SimpleNamespace(value=exc))
    assert _raw_outcome(report, call) == ("refused", REASON)
    assert judge(False, *_raw_outcome(report, call)).message == REASON
    call.excinfo.value = RuntimeError("boom")
    assert _raw_outcome(report, call) == ("failed", "RuntimeError: boom")
    call.excinfo = None
    assert _raw_outcome(report, call) == ("failed", "E   ...")


def test_a_reason_is_one_line_cut_at_a_word():
    reason = refusal_reason(ValueError("the platform refuses " + "everything " * 60))
    assert len(reason) <= 400 and reason.endswith(" everything…") and "\n" not in reason


@pytest.mark.parametrize(("text", "limit", "want"), [
    ("short enough", 12, "short enough"),
    ("bounds the agreement with the model", 31, "bounds the agreement with the…"),
    ("bounds the agreement with the model", 30, "bounds the agreement with the…"),
    ("bounds the agreement with the model", 29, "bounds the agreement with…"),
    ("cut at a space ", 9, "cut at a…"),
    ("one\nline per word", 7, "one…"),
    ("unbreakable", 6, "unbre…"),  # no word boundary: cut where it must
])
def test_shorten_cuts_at_a_word_boundary(text, limit, want):
    got = shorten(text, limit)
    assert got == want and len(got) <= limit


def test_scoreboard_notes_end_on_a_whole_word(tmp_path: Path):
    detail = ("not claimed, refusal not observable: int8 weights and activations do not "
              "give fp32 transformers' tokens (nor does transformers load the checkpoint): "
              "correctness.derived bounds the agreement with the model it was written from")
    _results("a", correctness__greedy_fp32=Cell(SKIPPED, False, detail)).write(
        tmp_path / "a.suite.json")
    [note] = [line for line in scoreboard.markdown(scoreboard.collect(tmp_path)).splitlines()
              if line.startswith("- ")]
    assert note.endswith("bounds the agreement with the…")


def test_fixtures_do_not_import_the_pytest_plugin():
    """The plugin registers the fixtures (``pytest_plugins``); the fixtures take
    the environment from :mod:`vllm_harness.env`, not from the plugin."""
    code = ("import sys, vllm_harness.fixtures\n"
            "assert 'vllm_harness.pytest_plugin' not in sys.modules, 'imported the plugin'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_top1_agreement_counts_exact_ties():
    """A position agrees when the reference token's logprob is the engine's best,
    tied or not; vLLM's rank would call both tied tokens 2."""
    from vllm_harness.agreement import teacher_forced_agreement

    prompts, refs = [[1, 2, 5, 7, 9]], [[5, 7, 9]]
    logprobs = [[{}, {}, {5: -0.5, 6: -0.5},  # tied best: agrees
                 {7: -2.0, 8: -0.1},  # another token is better: disagrees
                 {9: -0.2}]]  # the reference is the engine's best
    assert teacher_forced_agreement(logprobs, prompts, refs) == pytest.approx(2 / 3)
