"""Runs the chosen groups of vLLM's tests in one pytest subprocess with a
profile's environment and judges each group into one scoreboard cell.

The subprocess loads :mod:`vllm_harness.vllm_tests.plugin`, which writes one
JSON record per test phase; this side turns the records into outcomes, files
them under their groups (blaming the test a dead or stopped pytest was in),
and judges them by the same rules as the suites (:mod:`vllm_harness.judge`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_harness import provenance
from vllm_harness import runner as suite_runner
from vllm_harness.declaration import Profile
from vllm_harness.env import COMMON_ENV, DEFAULT_ENV, IN_PROCESS_ENV
from vllm_harness.judge import Cell, Results, combine, judge
from vllm_harness.vllm_tests import plugin
from vllm_harness.vllm_tests.plugin import tail
from vllm_harness.vllm_tests.sdist import VLLM_VERSION, tests_root
from vllm_harness.vllm_tests.subset import GROUPS

#: A test that takes longer than this is stopped and judged failed (a hang); the
#: run as a whole gets this much per group.
GROUP_TIMEOUT = 900


def profile_defaults(profile: Profile) -> dict[str, Any]:
    """Engine settings every engine of the run gets unless the test sets them."""
    return {"dtype": profile.dtypes[0], **profile.engine_args()}


# --- outcomes -----------------------------------------------------------------

@dataclass
class Outcome:
    nodeid: str
    outcome: str  # passed, failed, skipped or refused
    message: str = ""


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
        reason = f"pytest exited with {code}: {tail(out)}"
    else:
        reason = "no test of the group reported (collected none?): " + tail(out)
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
    the suites (:data:`~vllm_harness.env.IN_PROCESS_ENV`), where the
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
            plugin.ENV_MODEL: model,
            plugin.ENV_DEFAULTS: json.dumps(profile_defaults(profile)),
            plugin.ENV_DTYPES: json.dumps(profile.dtypes),
            plugin.ENV_OUTCOMES: str(outcomes_file),
        }
        tests = [t for group in groups for t in GROUPS[group].tests]
        # A file that does not import fails its own group, not the whole run.
        cmd = [sys.executable, "-m", "pytest", "-p", plugin.__name__,
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
    return suite_runner.results_path(results_dir, profile, "vllm-tests")


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
                      version=profile.version, hardware=profile.hardware,
                      run=provenance.record())
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

