"""The pytest side of the harness: the platform under test, its shared
engines and server, and the judging of every test by the declaration.

Loaded with ``-p vllm_harness.pytest_plugin --harness-platform COLUMN`` (the
``vllm-harness run`` command does this, one pytest session per platform
profile). The session's environment selects the platform before vLLM is
imported, since vLLM resolves its platform once per process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vllm_harness import declaration, provenance
from vllm_harness.env import COMMON_ENV, DEFAULT_ENV, IN_PROCESS_ENV
from vllm_harness.judge import Cell, Results, exception_outcome, judge, shorten

_RESULTS_KEY = pytest.StashKey[Results]()
_PROFILE_KEY = pytest.StashKey[declaration.Profile]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vllm-harness")
    group.addoption("--harness-platform", metavar="COLUMN",
                    help="the platform profile under test: an entry point name, or NAME/PROFILE")
    group.addoption("--harness-results", metavar="PATH", help="JSON file for the verdicts")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "feature(id): the scoreboard feature this test judges")
    config.addinivalue_line("markers", "derived_checkpoint: runs only on profiles that "
                            "derive the checkpoint they run ([engine] model_from)")
    column = config.getoption("--harness-platform")
    if not column:
        raise pytest.UsageError("vllm_harness.pytest_plugin needs --harness-platform")
    try:
        profile = declaration.find(column)
    except declaration.DeclarationError as e:
        raise pytest.UsageError(str(e)) from e
    for key, value in {**DEFAULT_ENV, **IN_PROCESS_ENV}.items():
        os.environ.setdefault(key, value)
    os.environ.update(COMMON_ENV)
    os.environ.update(profile.process_env())
    config.stash[_PROFILE_KEY] = profile
    results = Results(
        column=profile.column, entry_point=profile.entry_point, profile=profile.name,
        package=profile.package, version=profile.version, hardware=profile.hardware,
        run=provenance.record())
    config.stash[_RESULTS_KEY] = results
    config.pluginmanager.register(
        _Recorder(results, config.getoption("--harness-results")), "vllm-harness-recorder")


def _feature(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("feature")
    return marker.args[0] if marker else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    profile = config.stash[_PROFILE_KEY]
    if not profile.model_from:  # no cell at all: nothing of the kind to judge
        unrun = [i for i in items if i.get_closest_marker("derived_checkpoint")]
        if unrun:
            config.hook.pytest_deselected(items=unrun)
            items[:] = [i for i in items if i not in unrun]
    for item in items:
        feature = _feature(item)
        if feature is None:
            raise pytest.UsageError(f"{item.nodeid} judges no feature: mark it with "
                                    "@pytest.mark.feature(id)")
        if feature in profile.not_observable:
            reason = f"not claimed, refusal not observable: {profile.not_observable[feature]}"
            item.add_marker(pytest.mark.skip(reason=reason))


def _raw_outcome(report: pytest.TestReport, call: pytest.CallInfo[Any]) -> tuple[str, str]:
    if report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        return "skipped", reason.removeprefix("Skipped: ")
    if report.passed:
        return "passed", ""
    if call.excinfo is None:  # failed with no exception of its own to read
        return "failed", str(report.longrepr).strip()
    return exception_outcome(call.excinfo.value)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    feature = _feature(item)
    # a verdict once per test: from its call, or from a setup that did not pass
    if feature is None or not (report.when == "call" or
                               (report.when == "setup" and not report.passed)):
        return
    profile = item.config.stash[_PROFILE_KEY]
    claimed = profile.claims_feature(feature)
    raw, message = _raw_outcome(report, call)
    verdict = judge(claimed, raw, message)
    report.user_properties.append(("harness", {
        "feature": feature, "status": verdict.status, "claimed": claimed,
        "detail": verdict.message, "nodeid": item.nodeid,
    }))
    if verdict.ok and report.failed and report.when == "setup":
        # refused while building its fixture (e.g. the engine): there is no test
        # to run, and pytest runs the call of a setup that passed
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, verdict.message)
    elif verdict.ok and report.failed:  # a clean refusal of an unclaimed feature
        report.outcome = "passed"
        report.longrepr = None
    elif not verdict.ok:
        header = f"[{profile.column}] {feature}: {shorten(verdict.message.splitlines()[0], 500)}"
        report.outcome = "failed"
        report.longrepr = f"{header}\n\n{report.longrepr}"


class _Recorder:
    """Collects the verdicts on the controller (xdist workers send their
    reports, with the verdict in ``user_properties``) and writes them."""

    def __init__(self, results: Results, path: str | None) -> None:
        self.results = results
        self.path = path

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, data in report.user_properties:
            if key == "harness":
                self.results.add(data["feature"], Cell(
                    data["status"], data["claimed"], data["detail"], [data["nodeid"]]))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.path and not hasattr(session.config, "workerinput"):
            self.results.write(Path(self.path))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    results = config.stash[_RESULTS_KEY]
    terminalreporter.section(f"vllm-harness verdicts: {results.column} ({results.hardware})")
    for feature, cell in sorted(results.features.items()):
        claim = "claimed" if cell.claimed else "not claimed"
        detail = f"  {shorten(cell.detail.splitlines()[0], 160)}" if cell.detail else ""
        terminalreporter.write_line(f"{cell.status:<12} {feature:<32} {claim}{detail}")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def profile(request: pytest.FixtureRequest) -> declaration.Profile:
    return request.config.stash[_PROFILE_KEY]


pytest_plugins = ["vllm_harness.fixtures"]
