"""How a test outcome becomes a scoreboard cell, given what the platform claims.

A claimed feature must pass. An unclaimed one must be refused cleanly: an
error that says why (a 4xx, a ``ValueError`` or ``NotImplementedError`` with a
message), never a wrong answer, a crash or a hang. An unclaimed feature that
works is reported as "could claim". Where a refusal cannot be observed the
declaration says why, and the feature is skipped with that reason.

The suites' pytest plugin and the runner of vLLM's own tests both read a
test's exception through :func:`exception_outcome`, so a refusal means the
same thing, and gives the same reason, in every row of the scoreboard.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

PASS, FAIL, REFUSED, SKIPPED, COULD_CLAIM = "pass", "fail", "refused", "skipped", "could claim"
#: Worst first: a feature's cell is the worst status among its tests.
ORDER = (FAIL, REFUSED, PASS, COULD_CLAIM, SKIPPED)


#: A refusal's reason is kept to this many characters: enough for any sentence
#: that explains a refusal, short of a dump of the config it refused.
REASON_LIMIT = 400


def shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut after a whole word and
    marked with "…" when longer: a note cut mid-word reads as a typo."""
    if len(text) <= limit:
        return text
    head = text[:max(limit - 1, 0)]  # room for the ellipsis
    if limit > 1 and not text[limit - 1].isspace():  # the cut falls inside a word
        last = re.search(r"\s\S*$", head)
        if last and head[:last.start()].strip():
            head = head[:last.start()]
    return head.rstrip() + "…"


def is_refusal(exc: BaseException) -> bool:
    """A clean refusal: an error that explains itself, raised before any wrong
    result (validation errors, 4xx answers, unsupported settings). Without a
    message it explains nothing, so it is no refusal."""
    if isinstance(exc, NotImplementedError | ValueError):
        return bool(str(exc).strip())
    try:
        import openai
    except ImportError:  # pragma: no cover - openai is a dependency
        return False
    return isinstance(exc, openai.APIStatusError) and 400 <= exc.status_code < 500


def refusal_reason(exc: BaseException) -> str:
    """The refusal's reason on one line: pydantic wraps a validator's message
    in a header ("1 validation error for VllmConfig") and a ``[type=...]``
    trailer, which say nothing to a reader."""
    text = " ".join(str(exc).split())
    if "Value error, " in text:
        text = text.split("Value error, ", 1)[1].split(" [type=", 1)[0]
    return shorten(text, REASON_LIMIT)


def exception_outcome(exc: BaseException) -> tuple[str, str]:
    """How a test's exception enters :func:`judge`: ``refused`` with its
    reason, or ``failed`` with the error's type and message."""
    if is_refusal(exc):
        return "refused", refusal_reason(exc)
    return "failed", f"{type(exc).__name__}: {exc}".strip()


@dataclass
class Verdict:
    status: str
    ok: bool
    message: str


def judge(claimed: bool, outcome: str, message: str) -> Verdict:
    """``outcome`` is ``passed``, ``failed``, ``skipped`` or ``refused`` (an
    exception's comes from :func:`exception_outcome`)."""
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
    # in the order of the tests' names, not of their ending: the workers of a
    # run finish in any order, and the scoreboard must not change with it
    details = [c.detail for c in sorted(cells, key=lambda c: sorted(c.tests)[:1])
               if c.status == worst.status and c.detail]
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
    #: how the run was made (:func:`vllm_harness.provenance.record`)
    run: dict[str, str] = field(default_factory=dict)

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
