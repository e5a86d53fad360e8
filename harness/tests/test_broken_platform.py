"""Deliberately broken platforms make the harness fail, naming the platform,
the feature and the difference.

The fixture plugins are the scaffold with faults put in. One: its attention
negates the result it computed, and its declaration claims float16, which its
platform refuses. Another claims LoRA and runs vLLM's LoRA layers with a punica
wrapper that leaves the adapters out.
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


LORA_NAME = "no-lora"
LORA_IDENT = "no_lora"
IGNORING_WRAPPER = """
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU


class IgnoringWrapper(PunicaWrapperCPU):
    def add_lora_linear(self, *args, **kwargs):
        return None
"""


def _ignore_adapters(plugin: Path) -> None:
    package = plugin / "src" / f"vllm_{LORA_IDENT}"
    (package / "lora.py").write_text(IGNORING_WRAPPER)
    platform = package / "platform.py"
    text = platform.read_text()
    block = "    default_block_size = 16\n"
    assert block in text, "the scaffold's platform changed: update this fixture"
    platform.write_text(text.replace(block, block + (
        f'    punica_wrapper = "vllm_{LORA_IDENT}.lora.IgnoringWrapper"\n')))
    declaration = package / "capabilities.toml"
    text = declaration.read_text()
    declaration.write_text(text.replace('    "server.*",\n', '    "server.*",\n'
                                        '    "lora.offline",\n'))


def _installed(name: str, plugin: Path) -> Iterator[Path]:
    pip = [sys.executable, "-m", "pip"]
    result = subprocess.run([*pip, "install", "-q", "--no-deps", "--no-build-isolation",
                             str(plugin)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    try:
        yield plugin
    finally:
        subprocess.run([*pip, "uninstall", "-y", "-q", f"vllm-{name}"], capture_output=True,
                       timeout=300)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    plugin = create(NAME, tmp_path_factory.mktemp("plugins"))
    _break(plugin)
    yield from _installed(NAME, plugin)


@pytest.fixture(scope="module")
def ignores_adapters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    plugin = create(LORA_NAME, tmp_path_factory.mktemp("plugins"))
    _ignore_adapters(plugin)
    yield from _installed(LORA_NAME, plugin)


def _failing_run(ident: str, suites: str, selection: str, results: Path) -> str:
    """The harness's output on the platform's selected tests, which must fail."""
    cmd = [sys.executable, "-m", "vllm_harness", "run", "--platform", ident, "--suites", suites,
           "--results", str(results), "-n", "1", "--", "-k", selection]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1200)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-4000:]
    return out


def test_harness_names_platform_feature_and_difference(broken: Path, tmp_path: Path):
    out = _failing_run(IDENT, "correctness", "greedy or fp16", tmp_path)
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


def test_harness_names_the_adapter_a_platform_leaves_out(ignores_adapters: Path,
                                                         tmp_path: Path):
    out = _failing_run(LORA_IDENT, "lora", "each_adapter", tmp_path)
    assert f"[{LORA_IDENT}] lora.offline: claimed, but AssertionError: adapter lora-a: " in out, \
        out[-4000:]
    assert "against peft's" in out
    verdicts = json.loads((tmp_path / f"{LORA_IDENT}.suite.json").read_text())["features"]
    assert {f: v["status"] for f, v in verdicts.items()} == {"lora.offline": "fail"}
