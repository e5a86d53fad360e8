"""Registration: the entry point, selection, and activation by default or not."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from vllm_harness.declaration import GROUP, Profile

pytestmark = pytest.mark.xdist_group("registration")

PROBE = (
    "from vllm.platforms import current_platform\n"
    "cls = type(current_platform)\n"
    "print('PLATFORM=' + cls.__module__ + '.' + cls.__qualname__)\n"
)


def _platform(env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env=env, timeout=180)
    assert result.returncode == 0, f"probe failed:\n{result.stderr[-3000:]}"
    lines = [x for x in result.stdout.splitlines() if x.startswith("PLATFORM=")]
    return lines[-1].removeprefix("PLATFORM=")


def _without_selection(profile: Profile) -> dict[str, str]:
    drop = {"VLLM_PLUGINS", *profile.select_env}
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.mark.feature("registration.entry_point")
def test_entry_point_names_the_platform_class(profile: Profile):
    (ep,) = [e for e in entry_points(group=GROUP) if e.name == profile.entry_point]
    register = ep.load()
    assert callable(register), f"{ep.value} is not callable"
    # this process runs with the platform selected
    assert register() == profile.platform_class, (
        f"register() returned {register()!r} while selected; declared {profile.platform_class!r}")


@pytest.mark.feature("registration.selected")
def test_selected_platform_is_current(profile: Profile):
    got = _platform(dict(os.environ))
    assert got == profile.platform_class, (
        f"with VLLM_PLUGINS={profile.entry_point} current_platform is {got}, "
        f"declared {profile.platform_class}")


@pytest.mark.feature("registration.default")
def test_activation_without_selection_is_as_declared(profile: Profile):
    got = _platform(_without_selection(profile))
    if profile.active_by_default:
        assert got == profile.platform_class, (
            f"declared active by default, but with no selection current_platform is {got}")
    else:
        assert got != profile.platform_class, (
            "declared inactive without selection, but it activated with none")
    if profile.deselect_env:
        env = _without_selection(profile) | profile.deselect_env
        got = _platform(env)
        assert got != profile.platform_class, (
            f"still active with {profile.deselect_env}, which the declaration says turns it off")
