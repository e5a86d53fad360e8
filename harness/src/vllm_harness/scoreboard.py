"""The feature × platform scoreboard, generated from what actually ran.

Every run leaves one JSON file per profile and part (the suites, vLLM's own
tests) in a results folder. This module merges them into one table, writes it
as Markdown between two markers in a README and as JSON, and checks that both
are current, so a hand edit or a stale table fails CI.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vllm_harness.features import FEATURES
from vllm_harness.judge import COULD_CLAIM, FAIL, PASS, REFUSED, SKIPPED, Cell, Results, shorten

START = "<!-- scoreboard:start -->"
END = "<!-- scoreboard:end -->"
ICON = {PASS: "✅ pass", FAIL: "❌ fail", REFUSED: "⛔ refused", SKIPPED: "⏭️ skipped",
        COULD_CLAIM: "➕ could claim"}
HARDWARE = {"real": "hw", "emulated": "emu"}


class StaleError(Exception):
    """The checked-in scoreboard does not say what the results say."""


def collect(results_dir: Path) -> dict[str, Results]:
    """All results in a folder, merged per column."""
    merged: dict[str, Results] = {}
    paths = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    for path in paths:
        part = Results.read(path)
        if part.column not in merged:
            merged[part.column] = Results(**{**asdict(part), "features": {}})
        column = merged[part.column]
        # a column's record is its latest part's: the run that last wrote to it
        if part.run.get("date", "") > column.run.get("date", ""):
            column.run = dict(part.run)
        for feature, cell in part.features.items():
            merged[part.column].add(feature, cell)
    return dict(sorted(merged.items()))


def _rows(columns: dict[str, Results]) -> list[str]:
    seen = {f for r in columns.values() for f in r.features}
    return [f for f in FEATURES if f in seen] + sorted(f for f in seen if f not in FEATURES)


def _title(feature: str) -> str:
    if feature in FEATURES:
        return FEATURES[feature].title
    from vllm_harness.vllm_tests import GROUPS

    group = GROUPS.get(feature)
    return group.title if group else feature


def markdown(columns: dict[str, Results]) -> str:
    if not columns:
        return "_No results yet: run `vllm-harness run`, then `vllm-harness scoreboard --write`._"
    names = list(columns)
    head = ["feature", *(f"`{c}`<br>{r.package} {r.version}<br>{r.hardware}"
                         for c, r in columns.items())]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    suite = None
    notes = []
    for feature in _rows(columns):
        if feature.split(".", 1)[0] != suite:
            suite = feature.split(".", 1)[0]
            label = f"**{suite}**" + (": a subset of vLLM 0.32.0's own tests"
                                      if suite == "vllm" else "")
            lines.append(f"| {label} |" + " |" * len(names))
        cells = []
        for name in names:
            cell = columns[name].features.get(feature)
            if cell is None:
                cells.append("—")
                continue
            hw = HARDWARE.get(columns[name].hardware, columns[name].hardware)
            claim = "" if cell.claimed else " ⁿ"
            cells.append(f"{ICON[cell.status]}{claim} · {hw}")
            if cell.status in (SKIPPED, REFUSED, FAIL) and cell.detail:
                notes.append(f"- `{name}` {feature}, {cell.status}: "
                             f"{shorten(cell.detail.splitlines()[0], 200)}")
        lines.append(f"| {_title(feature)} <sub>`{feature}`</sub> | " + " | ".join(cells) + " |")
    legend = ("✅ claimed and passed · ❌ failed (a claim that does not hold, or an unclaimed "
              "feature neither refused nor working) · ⛔ not claimed, refused with a reason · "
              "➕ not claimed, yet passed · ⏭️ skipped, with the reason below · ⁿ not claimed · "
              "emu: ran on the CPU in place of the device · hw: ran on the device")
    return "\n".join([*lines, "", legend, *(["", *notes] if notes else [])])


def as_json(columns: dict[str, Results]) -> str:
    data: dict[str, Any] = {"schema": 1, "columns": {}}
    for name, r in columns.items():
        data["columns"][name] = {
            "entry_point": r.entry_point, "profile": r.profile, "package": r.package,
            "version": r.version, "hardware": r.hardware, "run": r.run,
            "features": {f: {"status": c.status, "claimed": c.claimed, "detail": c.detail}
                         for f, c in sorted(r.features.items())},
        }
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def _section(readme: str) -> tuple[int, int]:
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise StaleError(f"the README has no {START} ... {END} section for the scoreboard")
    return start + len(START), end


def embed(readme: str, table: str) -> str:
    start, end = _section(readme)
    return readme[:start] + "\n" + table + "\n" + readme[end:]


def _cells_of(readme_json: str) -> dict[tuple[str, str], str]:
    data = json.loads(readme_json)
    return {(c, f): v["status"] for c, col in data["columns"].items()
            for f, v in col["features"].items()}


def _verdicts(scoreboard_json: str) -> dict[str, Any]:
    """The JSON scoreboard without its runs' records: what a check compares."""
    data = json.loads(scoreboard_json)
    for column in data["columns"].values():
        column.pop("run", None)
    return data


def check(columns: dict[str, Results], readme: Path, json_path: Path) -> None:
    """Raise :class:`StaleError` naming what differs from the checked-in files.

    Verdicts are compared, the records of the runs are not: a run of another
    commit or machine that finds the same verdicts leaves the scoreboard current.
    """
    if not columns:
        raise StaleError("no results to check against: run `vllm-harness run` first")
    want_json = as_json(columns)
    problems = []
    if not json_path.exists():
        problems.append(f"{json_path} is missing")
    elif _verdicts(json_path.read_text()) != _verdicts(want_json):
        have = _cells_of(json_path.read_text())
        want = _cells_of(want_json)
        for key in sorted(set(have) | set(want)):
            if have.get(key) != want.get(key):
                problems.append(f"{key[0]} {key[1]}: checked in {have.get(key)}, "
                                f"results say {want.get(key)}")
        if not problems:
            problems.append(f"{json_path} differs in details from the results")
    text = readme.read_text()
    start, end = _section(text)
    if text[start:end].strip() != markdown(columns).strip():
        problems.append(f"the table in {readme} is not the one the results give")
    if problems:
        raise StaleError("the scoreboard is stale:\n  " + "\n  ".join(problems[:30]) +
                         "\nregenerate it with `vllm-harness scoreboard --write`")


def write(columns: dict[str, Results], readme: Path, json_path: Path) -> None:
    readme.write_text(embed(readme.read_text(), markdown(columns)))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(as_json(columns))


__all__ = ["END", "START", "Cell", "StaleError", "check", "collect", "markdown", "write"]
