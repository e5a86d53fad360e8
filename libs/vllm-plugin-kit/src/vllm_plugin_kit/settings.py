"""A plugin's settings as one table of data: validation, the env-var list, the README table.

A setting is reached two ways: ``--additional-config '{"SECTION": {"key": ...}}'``
(wins), or an environment variable, which is how a value reaches the worker
processes vLLM spawns. One table per plugin drives the parsing (errors name the
setting as the user wrote it), the list of variables vLLM's environment check
must know (``Platform.additional_env_vars``, also passed on to Ray workers)
and the settings table of the plugin's README (:func:`write_readme`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the README markers the generated table sits between
README_START = "<!-- settings:start -->"
README_END = "<!-- settings:end -->"

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20,
          "mb": 1000**2, "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30,
          "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}
_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


def usable_cores() -> int:
    """Cores this process may run on (its affinity), not all the host has."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ---------------------------------------------------------------- parsers
# Each takes the raw value and where it came from, and raises ValueError
# naming that place.

def parse_bytes(value: Any, where: str) -> int:
    """A memory size: bytes, or a number with a unit (``512MiB``, ``1.5GiB``,
    ``4GB``, ``2g``; binary units, and decimal ones spelled ``kb``/``mb``/``gb``)."""
    if isinstance(value, bool):
        size = 0
    elif isinstance(value, int | float):
        size = int(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{where}={value!r} is not a memory size; use bytes or a unit "
                             "such as '512MiB' or '4GiB'")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{where}={value!r} must be a positive memory size")
    return size


def parse_positive_int(value: Any, where: str) -> int:
    """A whole number above zero (``"4"`` or ``4``; not ``4.5``, ``true`` or ``0``)."""
    number = 0
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number <= 0:
        raise ValueError(f"{where}={value!r} must be a positive integer")
    return number


def parse_flag(value: Any, where: str) -> bool:
    """true/false, 1/0, on/off, yes/no (any case), or a JSON boolean."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{where}={value!r} must be 1 or 0 (true or false)")


def read_switch(env: str, owner: str, environ: Mapping[str, str] | None = None) -> bool | None:
    """A plugin's on/off environment switch, read in its entry point: None when
    unset; a value that is not a flag counts as off, with a warning (vLLM
    swallows exceptions raised in a platform plugin's entry point)."""
    environ = os.environ if environ is None else environ
    text = environ.get(env, "").strip()
    if not text:
        return None
    try:
        return parse_flag(text, env)
    except ValueError as error:
        from vllm_plugin_kit import get_logger

        get_logger(__name__).warning("%s; %s stays inactive", error, owner)
        return False


def choice(*choices: str) -> Callable[[Any, str], str]:
    """A parser that takes one of ``choices`` (any case)."""

    def parse(value: Any, where: str) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{where}={value!r}; choose one of {', '.join(choices)}")
        return text

    parse.__doc__ = f"one of {', '.join(choices)}"
    return parse


def number_between(low: float, high: float, unit: str = "") -> Callable[[Any, str], float]:
    """A parser of a number from ``low`` to ``high``."""

    def parse(value: Any, where: str) -> float:
        try:
            number = -1.0 if isinstance(value, bool) else float(str(value).strip())
        except ValueError:
            number = float("nan")
        if not low <= number <= high:
            raise ValueError(f"{where}={value!r}; give a number from {low:g} to {high:g}"
                             + (f" ({unit})" if unit else ""))
        return number

    return parse


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class Setting:
    """One row of a plugin's settings table."""

    #: the ``additional_config`` key; None for an environment-only setting
    key: str | None
    #: the environment variable; None for a setting only additional_config can hold
    env: str | None
    parse: Callable[[Any, str], Any]
    #: the value when neither place gives one (None: "not set", e.g. derived later)
    default: Any
    help: str
    #: how the default reads in the README, when ``str(default)`` says it badly
    default_text: str | None = None

    def __post_init__(self) -> None:
        if self.key is None and self.env is None:
            raise ValueError("a setting needs a key, an environment variable or both")

    @property
    def name(self) -> str:
        return self.key or self.env or ""


def device_settings(env_prefix: str, *, memory: int = 2 << 30,
                    memory_text: str = "`2GiB`") -> list[Setting]:
    """The settings every host stand-in of a device has, spelled alike in every plugin:
    the device's memory capacity and the torch threads of each worker."""
    return [
        Setting("device_memory", f"{env_prefix}_DEVICE_MEMORY", parse_bytes, memory,
                "capacity of the device memory the KV cache is sized from, e.g. `512MiB`, "
                "`1.5GiB`, `4GB` or bytes", memory_text),
        Setting("num_threads", f"{env_prefix}_NUM_THREADS", parse_positive_int, None,
                "torch threads per worker", "`OMP_NUM_THREADS` if you set it, else the usable "
                "cores ÷ the workers on this host"),
    ]


class SettingsTable:
    """A plugin's settings under one ``additional_config`` section."""

    def __init__(self, section: str, settings: Sequence[Setting]) -> None:
        self.section = section
        self.settings = tuple(settings)
        keys = [s.key for s in self.settings if s.key]
        if len(set(keys)) != len(keys):
            raise ValueError(f"settings of {section}: a key is listed twice")

    def __iter__(self):
        return iter(self.settings)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.settings if s.key)

    def env_vars(self) -> list[str]:
        """Every environment variable of the table, for ``Platform.additional_env_vars``."""
        return [s.env for s in self.settings if s.env]

    def section_of(self, additional_config: Mapping[str, Any] | None) -> Mapping[str, Any]:
        """The plugin's section of ``additional_config``, checked: a mapping of known keys."""
        section = (additional_config or {}).get(self.section)
        if section is None:
            return {}
        if not isinstance(section, Mapping):
            raise ValueError(f"additional_config.{self.section} must be a mapping, "
                             f"not {section!r}")
        unknown = set(section) - set(self.keys)
        if unknown:
            raise ValueError(f"unknown additional_config.{self.section} keys {sorted(unknown)}; "
                             f"known keys: {', '.join(self.keys)}")
        return section

    def given(self, setting: Setting, additional_config: Mapping[str, Any] | None,
              environ: Mapping[str, str] | None = None) -> tuple[Any, str] | None:
        """(raw value, where it was given): additional_config wins, else the
        environment (an empty variable counts as unset); None where neither gives it."""
        environ = os.environ if environ is None else environ
        section = self.section_of(additional_config)
        if setting.key and section.get(setting.key) is not None:
            return section[setting.key], f"additional_config.{self.section}.{setting.key}"
        raw = environ.get(setting.env, "") if setting.env else ""
        if raw.strip():
            return raw, setting.env
        return None

    def resolve(self, additional_config: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Every setting's value by name, validated; the first bad one raises,
        naming where it was given."""
        values = {}
        for setting in self.settings:
            given = self.given(setting, additional_config, environ)
            values[setting.name] = setting.default if given is None else \
                setting.parse(*given)
        return values

    def where(self, name: str) -> str:
        """How a user sets ``name``, for messages: the variable, or both places."""
        setting = next(s for s in self.settings if s.name == name)
        places = [setting.env, setting.key and f"additional_config.{self.section}.{setting.key}"]
        return " or ".join(p for p in places if p)

    def markdown(self) -> str:
        """The README's settings table."""
        rows = [f"| environment | `--additional-config '{{\"{self.section}\": {{...}}}}'` "
                "| default | meaning |", "|---|---|---|---|"]
        for s in self.settings:
            key = f"`{s.key}`" if s.key else "—"
            default = s.default_text if s.default_text is not None else (
                "unset" if s.default is None else f"`{s.default}`")
            env = f"`{s.env}`" if s.env else "—"
            rows.append(f"| {env} | {key} | {default} | {s.help} |")
        return "\n".join(rows)


# ---------------------------------------------------------------- the README

def render_readme(text: str, table: SettingsTable) -> str:
    """``text`` with the settings table between its markers replaced."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"no {README_START} ... {README_END} markers in the README")
    start += len(README_START)
    return text[:start] + "\n" + table.markdown() + "\n" + text[end:]


def readme_is_current(path: Path, table: SettingsTable) -> bool:
    text = Path(path).read_text()
    return render_readme(text, table) == text


def write_readme(path: Path, table: SettingsTable) -> bool:
    """Regenerate the table in the README at ``path``; True if it changed."""
    text = Path(path).read_text()
    new = render_readme(text, table)
    if new != text:
        Path(path).write_text(new)
    return new != text


def thread_count(setting: int | None, tensor_parallel: int, pipeline_parallel: int) -> int:
    """Torch threads of one worker: the plugin's setting, else ``OMP_NUM_THREADS``
    where the user (not vLLM) set it, else the usable cores shared by the
    workers of this host."""
    if setting is not None:
        return setting
    from vllm.utils.torch_utils import OMP_NUM_THREADS_SET_BY_VLLM

    user = os.environ.get("OMP_NUM_THREADS", "").strip()
    if user.isdigit() and int(user) > 0 and OMP_NUM_THREADS_SET_BY_VLLM not in os.environ:
        return int(user)
    return max(1, usable_cores() // (tensor_parallel * pipeline_parallel))
