"""Runs the suites on each platform profile, each in its own pytest session.

vLLM resolves its platform once per process, so a profile never shares a
process with another: ``vllm-harness run`` starts one pytest session per
profile with that profile's environment (``VLLM_PLUGINS`` and the selection
the plugin declares), on pytest-xdist workers grouped per engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from vllm_harness.declaration import Profile
from vllm_harness.env import COMMON_ENV, DEFAULT_ENV
from vllm_harness.features import SUITES

#: A hung engine or server fails its test instead of the whole run.
TEST_TIMEOUT_S = 900


def results_path(results_dir: Path, profile: Profile, part: str) -> Path:
    return results_dir / f"{profile.file_stem}.{part}.json"


def suite_modules(suites: list[str] | None) -> list[str]:
    chosen = suites or SUITES
    unknown = set(chosen) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown suite(s) {sorted(unknown)}; known: {', '.join(SUITES)}")
    return [f"vllm_harness.suites.test_{s}" for s in SUITES if s in chosen]


def pytest_command(profile: Profile, results: Path, suites: list[str] | None,
                   workers: int, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "vllm_harness.pytest_plugin",
           "--harness-platform", profile.column, "--harness-results", str(results),
           "-p", "no:cacheprovider", "-o", f"timeout={TEST_TIMEOUT_S}", "-rfEs",
           # node ids relative to the package, wherever it is installed
           "--rootdir", str(Path(__file__).parent),
           "--pyargs", *suite_modules(suites)]
    if workers > 1:
        cmd += ["-n", str(workers), "--dist", "loadgroup"]
    return cmd + extra


def run(profiles: list[Profile], results_dir: Path, suites: list[str] | None = None,
        workers: int = 2, extra: list[str] | None = None, vllm_tests: bool = False) -> bool:
    """Every profile in turn; True when every verdict of every profile is ok.

    With ``vllm_tests``, vLLM's own tests run beside the suites in a process of
    their own: the suites leave a core idle while engines start, so the two
    together take less time than one after the other.
    """
    suite_modules(suites)  # unknown names are an error before anything runs
    ok = True
    for profile in profiles:
        results = results_path(results_dir, profile, "suite")
        results.unlink(missing_ok=True)
        env = {**DEFAULT_ENV, **os.environ, **COMMON_ENV, **profile.process_env()}
        chosen = [s for s in (suites or SUITES) if s in profile.suites]
        if not chosen:
            print(f"== {profile.column}: runs none of the suites asked for", flush=True)
            continue
        cmd = pytest_command(profile, results, chosen, workers, extra or [])
        print(f"== {profile.column} ({profile.package} {profile.version}, {profile.hardware})",
              flush=True)
        start = time.monotonic()
        # vLLM's tests are chosen for the default model (see vllm_tests.MODEL_SKIPS)
        beside = (_start_vllm_tests(profile, results_dir)
                  if vllm_tests and profile.runs_default_model else None)
        code = subprocess.call(cmd, env=env)
        print(f"== {profile.column}: pytest exit {code} in {time.monotonic() - start:.0f} s",
              flush=True)
        if code != 0 or not results.exists():
            ok = False
        if beside is not None:
            proc, log = beside
            vllm_code = proc.wait()
            print(log.read_text(), end="", flush=True)
            print(f"== {profile.column}: vLLM's tests exit {vllm_code}, both done in "
                  f"{time.monotonic() - start:.0f} s", flush=True)
            ok &= vllm_code == 0
    return ok


def _start_vllm_tests(profile: Profile, results_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """``vllm-harness vllm-tests`` for one profile, its output kept for after the suites'."""
    results_dir.mkdir(parents=True, exist_ok=True)
    log = results_dir / "logs" / f"{profile.file_stem}.vllm-tests.out"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vllm_harness", "vllm-tests", "--platform",
           f"{profile.entry_point}/{profile.name}",
           "--results", str(results_dir)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**DEFAULT_ENV, **os.environ})
    return proc, log
