"""How a test outcome becomes a scoreboard cell, given what the platform claims.

A claimed feature must pass. An unclaimed one must be refused cleanly: an
error that says why (a 4xx, a ``ValueError`` or ``NotImplementedError`` with a
message), never a wrong answer, a crash or a hang. An unclaimed feature that
works is reported as "could claim". Where a refusal cannot be observed the
declaration says why, and the feature is skipped with that reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

PASS, FAIL, REFUSED, SKIPPED, COULD_CLAIM = "pass", "fail", "refused", "skipped", "could claim"
#: Worst first: a feature's cell is the worst status among its tests.
ORDER = (FAIL, REFUSED, PASS, COULD_CLAIM, SKIPPED)


@dataclass
class Verdict:
    status: str
    ok: bool
    message: str


def judge(claimed: bool, outcome: str, message: str) -> Verdict:
    """``outcome`` is ``passed``, ``failed``, ``skipped`` or ``refused``."""
    if outcome == "skipped":
        return Verdict(SKIPPED, True, message)
    if claimed:
        if outcome == "passed":
            return Verdict(PASS, True, "")
        if outcome == "refused":
            return Verdict(FAIL, False, f"claimed, but refused: {message}")
        return Verdict(FAIL, False, f"claimed, but {message}")
    if outcome == "passed":
        return Verdict(COULD_CLAIM, True, "works, though not claimed")
    if outcome == "refused":
        if not message.strip():
            return Verdict(FAIL, False, "not claimed and refused, but with no reason given")
        return Verdict(REFUSED, True, message)
    return Verdict(FAIL, False, f"not claimed, and not refused cleanly either: {message}")


@dataclass
class Cell:
    status: str
    claimed: bool
    detail: str = ""
    tests: list[str] = field(default_factory=list)


def combine(cells: list[Cell]) -> Cell:
    """One feature's cell from the cells of its tests: the worst status wins."""
    worst = min(cells, key=lambda c: ORDER.index(c.status))
    details = [c.detail for c in cells if c.status == worst.status and c.detail]
    return Cell(worst.status, worst.claimed, "; ".join(dict.fromkeys(details)),
                sorted(t for c in cells for t in c.tests))


@dataclass
class Results:
    """What one run judged for one scoreboard column; one JSON file per run."""

    column: str
    entry_point: str
    profile: str
    package: str
    version: str
    hardware: str
    features: dict[str, Cell] = field(default_factory=dict)
    schema: int = 1

    def add(self, feature: str, cell: Cell) -> None:
        if feature in self.features:
            cell = combine([self.features[feature], cell])
        self.features[feature] = cell

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["features"] = dict(sorted(data["features"].items()))
        path.write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def read(cls, path: Path) -> Results:
        data = json.loads(path.read_text())
        features = {k: Cell(**v) for k, v in data.pop("features").items()}
        return cls(**data, features=features)
