"""A deliberately broken platform makes the harness fail, naming the platform,
the feature and the difference.

The fixture plugin is the scaffold with two faults put in: its attention
negates the result it computed, and its declaration claims float16, which its
platform refuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_harness.scaffold import create

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("broken")]

NAME = "broken-attn"
IDENT = "broken_attn"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _break(plugin: Path) -> None:
    attention = plugin / "src" / f"vllm_{IDENT}" / "attention.py"
    text = attention.read_text()
    owner = "    OWNER = PLUGIN\n"
    assert owner in text, "the scaffold's attention changed: update this fixture"
    attention.write_text(text.replace(owner, owner + (
        "\n    def forward(self, *args, **kwargs):\n"
        "        return super().forward(*args, **kwargs).neg_()\n")))
    declaration = plugin / "src" / f"vllm_{IDENT}" / "capabilities.toml"
    text = declaration.read_text()
    assert '    "correctness.logprobs",\n' in text
    declaration.write_text(text.replace('    "correctness.logprobs",\n',
                                        '    "correctness.logprobs",\n    "correctness.fp16",\n'))


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    plugin = create(NAME, tmp_path_factory.mktemp("plugins"))
    _break(plugin)
    pip = [sys.executable, "-m", "pip"]
    result = subprocess.run([*pip, "install", "-q", "--no-deps", "--no-build-isolation",
                             str(plugin)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    try:
        yield plugin
    finally:
        subprocess.run([*pip, "uninstall", "-y", "-q", f"vllm-{NAME}"], capture_output=True,
                       timeout=300)


def test_harness_names_platform_feature_and_difference(broken: Path, tmp_path: Path):
    cmd = [sys.executable, "-m", "vllm_harness", "run", "--platform", IDENT,
           "--suites", "correctness", "--results", str(tmp_path), "-n", "1",
           "--", "-k", "greedy or fp16"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1200)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-4000:]
    # wrong attention values: the difference against transformers, per prompt
    assert f"[{IDENT}] correctness.greedy_fp32: claimed, but AssertionError: 8/8 prompts " \
           "differ" in out, out[-4000:]
    assert "first difference at token" in out
    # a claim the platform does not hold: it refuses float16, with its reason
    assert f"[{IDENT}] correctness.fp16: claimed, but refused:" in out
    assert "does not support dtype=float16" in out
    verdicts = json.loads((tmp_path / f"{IDENT}.suite.json").read_text())["features"]
    assert {f: v["status"] for f, v in verdicts.items()} == {
        "correctness.greedy_fp32": "fail", "correctness.fp16": "fail"}
