"""The scaffold: a generated plugin is complete, lint-clean, installable, selectable,
and passes the harness's registration, correctness and server suites.

The slow tests install the generated plugin into the current environment (no
dependencies, no build isolation) and uninstall it at the end of the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_harness import declaration
from vllm_harness.declaration import tomllib
from vllm_harness.scaffold import ScaffoldError, create, main

NAME = "scaffold-probe"
IDENT = "scaffold_probe"
PACKAGE = "vllm_scaffold_probe"
ENV = "VLLM_SCAFFOLD_PROBE"
PLATFORM = f"{PACKAGE}.platform.ScaffoldProbePlatform"
ROOT = Path(__file__).resolve().parents[2]

# one worker holds the installed plugin for the whole module
pytestmark = pytest.mark.xdist_group("scaffold")

PROBE = (
    "from vllm.platforms import current_platform\n"
    "print(type(current_platform).__module__ + '.' + type(current_platform).__name__)\n"
)


def _env(**extra: str) -> dict[str, str]:
    """This environment without any platform selection, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", ENV)}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def _run(args: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=_env(**env),
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create(NAME, tmp_path_factory.mktemp("plugins"))


@pytest.fixture(scope="module")
def installed(generated: Path) -> Iterator[Path]:
    """The generated plugin, installed into this environment for the module."""
    pip = [sys.executable, "-m", "pip"]
    result = _run([*pip, "install", "-q", "--no-deps", "--no-build-isolation", str(generated)],
                  timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    try:
        yield generated
    finally:
        _run([*pip, "uninstall", "-y", "-q", f"vllm-{NAME}"], timeout=300)


# ---------------------------------------------------------------- rendering

def test_files(generated: Path):
    assert generated.name == f"vllm-{NAME}"
    files = {p.relative_to(generated).as_posix() for p in generated.rglob("*") if p.is_file()}
    package = {f"src/{PACKAGE}/{m}.py" for m in (
        "__init__", "platform", "worker", "model_runner", "attention", "patches", "envs")}
    assert files == {"pyproject.toml", "README.md", "tests/test_units.py", ".copier-answers.yml",
                     f"src/{PACKAGE}/capabilities.toml", *package}
    for path in generated.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "{{" not in text and "{%" not in text, f"unrendered Jinja in {path}"


def test_stand_in_code_stays_small(generated: Path):
    """The host stand-ins live in vllm-plugin-kit; a new backend owns only its
    platform's choices (half of the 805 lines the template once generated)."""
    lines = sum(len(p.read_text().splitlines()) for p in (generated / "src").rglob("*.py"))
    assert lines <= 402, lines


def test_copier_answers_let_copier_update(generated: Path):
    import yaml

    answers = yaml.safe_load((generated / ".copier-answers.yml").read_text())
    assert answers["name"] == NAME
    assert Path(answers["_src_path"]).resolve() == (
        Path(__file__).resolve().parents[1] / "src" / "vllm_harness" / "template").resolve() \
        or answers["_src_path"].endswith("vllm_harness/template")


def test_readme_settings_table_rendered(generated: Path):
    readme = (generated / "README.md").read_text()
    assert f"| `{ENV}_DEVICE_MEMORY` | `device_memory` | `2GiB` |" in readme


def test_pyproject(generated: Path):
    project = tomllib.loads((generated / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"vllm-{NAME}"
    assert project["project"]["version"] == "0.1.0"
    assert set(project["project"]["dependencies"]) == {"vllm==0.32.0", "torch==2.13.0",
                                                       "vllm-plugin-kit==0.1.0"}
    assert project["project"]["entry-points"]["vllm.platform_plugins"] == {
        IDENT: f"{PACKAGE}:register"}
    assert "capabilities.toml" in project["tool"]["setuptools"]["package-data"][PACKAGE]
    test_extra = set(project["project"]["optional-dependencies"]["test"])
    assert {"pytest>=8,<9.2", "openai>=1.0"} <= test_extra


def test_declaration_parses(generated: Path):
    text = (generated / "src" / PACKAGE / declaration.FILENAME).read_text()
    (profile,) = declaration.parse(tomllib.loads(text), IDENT, f"vllm-{NAME}", "0.1.0", "test")
    assert profile.platform_class == PLATFORM
    assert profile.hardware == "emulated" and not profile.active_by_default
    assert profile.activation_log == f"Platform plugin {IDENT} is activated"
    assert profile.select_env == {ENV: "1"}
    assert profile.dtypes == ["float32", "bfloat16"]
    assert profile.claims_feature("registration.selected")
    assert profile.claims_feature("server.chat")
    assert profile.claims_feature("correctness.greedy_fp32")
    assert not profile.claims_feature("correctness.bf16")


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
@pytest.mark.parametrize("name", ["x", "abcdefghij-klmnopqrs"])  # shortest and longest names
def test_ruff_clean(name: str, tmp_path: Path):
    target = create(name, tmp_path)
    result = _run(["ruff", "check", "--no-cache", "--config", str(ROOT / "ruff.toml"),
                   str(target)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", [
    "My-Npu", "npu_2", "2npu", "-npu", "npu-", "a--b", "", "lint", "harness", "a" * 21,
])
def test_bad_names_are_refused(name: str, tmp_path: Path):
    with pytest.raises(ScaffoldError, match="backend name"):
        create(name, tmp_path)
    assert not any(tmp_path.iterdir())


def test_existing_folder_needs_overwrite(tmp_path: Path):
    target = create("probe2", tmp_path)
    (target / "README.md").write_text("mine")
    (target / "NOTES.md").write_text("kept")
    with pytest.raises(ScaffoldError, match="exists already"):
        create("probe2", tmp_path)
    assert create("probe2", tmp_path, overwrite=True) == target
    assert (target / "README.md").read_text() != "mine"
    assert (target / "NOTES.md").read_text() == "kept"


def test_main_prints_next_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["probe3", "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tox -e probe3" in out and "pip install" in out
    assert main(["probe3", "--dest", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err


# ---------------------------------------------------------------- installed

@pytest.mark.slow
@pytest.mark.parametrize(("env", "active"), [
    ({"VLLM_PLUGINS": IDENT}, True),
    ({ENV: "1", "VLLM_CPU_SIM": "0"}, True),  # the env switch (cpu-sim off: one at a time)
    ({}, False),  # coexists with vllm-cpu-sim, active by default
    ({"VLLM_PLUGINS": "cpu_sim"}, False),
])
def test_activation(installed: Path, env: dict[str, str], active: bool):
    result = _run([sys.executable, "-c", PROBE], timeout=300, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    platform = result.stdout.strip().splitlines()[-1]
    assert (platform == PLATFORM) == active, platform


@pytest.mark.slow
def test_declaration_found_through_entry_point(installed: Path):
    code = (
        "from vllm_harness import declaration\n"
        f"(p,) = declaration.discover([{IDENT!r}])\n"
        "print(p.package, p.version, p.platform_class)\n"
    )
    result = _run([sys.executable, "-c", code], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [f"vllm-{NAME}", "0.1.0", PLATFORM]


@pytest.mark.slow
def test_generated_unit_tests_pass(installed: Path):
    result = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   str(installed / "tests")], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_harness_suites_pass(installed: Path, tmp_path: Path):
    """The claims of the generated declaration hold: every verdict ok."""
    results = tmp_path / "results"
    result = _run([sys.executable, "-m", "vllm_harness", "run", "--platform", IDENT,
                   "--suites", "registration,correctness,server", "--results", str(results)],
                  timeout=3600)
    listing = sorted(p.name for p in results.iterdir()) if results.exists() else []
    assert result.returncode == 0, (
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}\nresults: {listing}")
    verdicts = json.loads((results / f"{IDENT}.suite.json").read_text())["features"]
    claimed = {f: v["status"] for f, v in verdicts.items() if v["claimed"]}
    assert claimed and set(claimed.values()) == {"pass"}, claimed
    assert {f.split(".")[0] for f in claimed} == {"registration", "correctness", "server"}
