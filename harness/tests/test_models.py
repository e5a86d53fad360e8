"""Checkpoints a plugin derives from a harness model (``[engine] model_from``):
written once per machine, rebuilt when what wrote them changes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vllm_harness.models import MARKER, derive

TOOL = '''
from pathlib import Path

CALLS = []


def write(src: Path, dst: Path, scheme: str = "plain") -> None:
    CALLS.append(scheme)
    (dst / "weights.txt").write_text((src / "weights.txt").read_text() + " as " + scheme)
'''


@pytest.fixture
def tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "tool.py").write_text(TOOL)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("pkg", "pkg.tool"):
        sys.modules.pop(name, None)


def _source(root: Path) -> Path:
    src = root / "models" / "base"
    src.mkdir(parents=True)
    (src / "weights.txt").write_text("w")
    (src / MARKER).write_text(json.dumps({"variant": "full"}))
    return src


def test_derived_once_then_taken_from_the_cache(tool: Path):
    import pkg.tool

    src = _source(tool)
    first = derive(src, "pkg.tool:write", {"scheme": "W8A8"})
    again = derive(src, "pkg.tool:write", {"scheme": "W8A8"})
    assert first == again and first.parent == src.parent
    assert (first / "weights.txt").read_text() == "w as W8A8"
    assert pkg.tool.CALLS == ["W8A8"]
    other = derive(src, "pkg.tool:write", {"scheme": "W8A8_DYNAMIC"})
    assert other != first and (other / "weights.txt").read_text() == "w as W8A8_DYNAMIC"
    assert not [p for p in src.parent.iterdir() if p.name.startswith(".staging-")]


def test_a_changed_tool_writes_the_checkpoint_again(tool: Path):
    src = _source(tool)
    first = derive(src, "pkg.tool:write")
    (tool / "pkg" / "tool.py").write_text(TOOL.replace('" as "', '" then "'))
    sys.modules.pop("pkg.tool", None)
    second = derive(src, "pkg.tool:write")
    assert second != first and (second / "weights.txt").read_text() == "w then plain"


def test_a_missing_function_is_named(tool: Path):
    with pytest.raises(LookupError, match=r"pkg\.tool has no function 'wirte'"):
        derive(_source(tool), "pkg.tool:wirte")
