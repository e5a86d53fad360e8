"""The settings of this plugin: warmup shapes and the simulated device memory.

Warmup shapes are (prompt length, new tokens, batch size) triples, given like
vllm-spyre's: three comma-separated environment variables zipped together,
or ``--additional-config '{"spyre_like": {"warmup_shapes": [[64, 20, 4]]}}'``,
which wins when both are given. Environment variables reach the worker
processes vLLM spawns; every ``VLLM_SPYRE_LIKE_*`` name is in :data:`ENV_VARS`
so vLLM's environment check knows it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from vllm_spyre_like import ENV_ENABLE, PLUGIN

#: Capacity of the simulated device memory, e.g. "4GiB", "512MiB" or bytes.
ENV_MEMORY = "VLLM_SPYRE_LIKE_DEVICE_MEMORY"
ENV_PROMPT_LENS = "VLLM_SPYRE_LIKE_WARMUP_PROMPT_LENS"
ENV_NEW_TOKENS = "VLLM_SPYRE_LIKE_WARMUP_NEW_TOKENS"
ENV_BATCH_SIZES = "VLLM_SPYRE_LIKE_WARMUP_BATCH_SIZES"
#: "static" (default) or "continuous" batching
ENV_MODE = "VLLM_SPYRE_LIKE_MODE"
#: torch.compile backend of the per-shape graphs: inductor (default), aot_eager, eager
ENV_BACKEND = "VLLM_SPYRE_LIKE_COMPILE_BACKEND"
#: how long (ms) static batching holds a batch that could still take more requests
ENV_BATCH_WAIT = "VLLM_SPYRE_LIKE_BATCH_WAIT_MS"
ENV_VARS = [ENV_ENABLE, ENV_MEMORY, ENV_PROMPT_LENS, ENV_NEW_TOKENS, ENV_BATCH_SIZES,
            ENV_MODE, ENV_BACKEND, ENV_BATCH_WAIT]
MODES = ("static", "continuous")

#: additional_config section and key of the warmup shapes
CONFIG_SECTION = PLUGIN
CONFIG_SHAPES = f"additional_config.{PLUGIN}.warmup_shapes"

CONFIG_KEYS = ("warmup_shapes", "mode", "compile_backend", "batch_wait_ms")

#: Requests sent together reach the engine one by one; this long a wait lets
#: them share one padded batch instead of each partial batch paying the full shape.
DEFAULT_BATCH_WAIT_MS = 50.0

#: Used when neither the environment nor additional_config gives shapes.
DEFAULT_SHAPES_TEXT = "64", "20", "4"

DEFAULT_MEMORY = 2 << 30
_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def device_memory() -> int:
    """Bytes of the simulated device, from ``VLLM_SPYRE_LIKE_DEVICE_MEMORY``."""
    value = os.environ.get(ENV_MEMORY, "").strip()
    if not value:
        return DEFAULT_MEMORY
    match = re.fullmatch(r"([0-9]+)\s*([a-zA-Z]*)", value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or int(match.group(1)) <= 0:
        raise ValueError(
            f"{ENV_MEMORY}={value!r} is not a memory size; use bytes, MiB or GiB, e.g. '4GiB'"
        )
    return int(match.group(1)) * _UNITS[unit]


class WarmupShape(NamedTuple):
    """One static shape the device is compiled for."""

    prompt_len: int
    new_tokens: int
    batch_size: int

    def fits(self, prompt_tokens: int, max_tokens: int) -> bool:
        """Whether one request fits this shape (batch size aside)."""
        return prompt_tokens <= self.prompt_len and max_tokens <= self.new_tokens

    def __str__(self) -> str:
        return (f"(prompt_len={self.prompt_len}, new_tokens={self.new_tokens}, "
                f"batch_size={self.batch_size})")


def describe(shapes: Iterable[WarmupShape]) -> str:
    return ", ".join(str(s) for s in shapes)


def fitting(shapes: Iterable[WarmupShape], prompt_tokens: int,
            max_tokens: int) -> list[WarmupShape]:
    """The shapes one request fits, batch size aside."""
    return [s for s in shapes if s.fits(prompt_tokens, max_tokens)]


def unfittable_message(shapes: Iterable[WarmupShape], prompt_tokens: int,
                       max_tokens: int) -> str:
    """The refusal of a request that fits no warmup shape, naming the shapes."""
    return (
        f"Request with {prompt_tokens} prompt tokens and max_tokens={max_tokens} does not "
        f"fit any warmup shape of {PLUGIN} (static batching serves only requests with "
        f"prompt tokens <= prompt_len and max_tokens <= new_tokens of a shape); "
        f"warmup shapes: {describe(shapes)}"
    )


def _positive_int(value: Any, setting: str) -> int:
    if isinstance(value, bool):
        value = None
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        number = 0
    if number <= 0:
        raise ValueError(f"{setting}: {value!r} is not a positive integer")
    return number


def _split(text: str, setting: str) -> list[int]:
    parts = [p for p in (x.strip() for x in text.split(",")) if p != ""] if text.strip() else []
    if not parts:
        raise ValueError(f"{setting} is empty; give comma-separated positive integers, e.g. '64'")
    return [_positive_int(p, setting) for p in parts]


def shapes_from_env(environ: Mapping[str, str] | None = None) -> list[WarmupShape] | None:
    """The shapes the three environment variables give, zipped; None if none is set."""
    environ = os.environ if environ is None else environ
    names = (ENV_PROMPT_LENS, ENV_NEW_TOKENS, ENV_BATCH_SIZES)
    given = {name: environ.get(name) for name in names if environ.get(name) is not None}
    if not given:
        return None
    missing = [name for name in names if name not in given]
    if missing:
        raise ValueError(
            f"warmup shapes need all of {', '.join(names)}; {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set"
        )
    lists = [_split(given[name], name) for name in names]
    if len({len(values) for values in lists}) != 1:
        counts = ", ".join(f"{name} has {len(v)}" for name, v in zip(names, lists))
        raise ValueError(f"warmup shapes: the three lists must have the same length ({counts})")
    return [WarmupShape(*triple) for triple in zip(*lists)]


def shapes_from_config(additional_config: Mapping[str, Any] | None) -> list[WarmupShape] | None:
    """The shapes ``additional_config.spyre_like.warmup_shapes`` gives; None if absent."""
    section = (additional_config or {}).get(CONFIG_SECTION)
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise ValueError(f"additional_config.{PLUGIN} must be a mapping, not {section!r}")
    unknown = set(section) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown additional_config.{PLUGIN} keys {sorted(unknown)}; "
                         f"known keys: {', '.join(CONFIG_KEYS)}")
    raw = section.get("warmup_shapes")
    if raw is None:
        return None
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable) or not list(raw):
        raise ValueError(f"{CONFIG_SHAPES} must be a non-empty list of "
                         f"[prompt_len, new_tokens, batch_size] triples, not {raw!r}")
    shapes = []
    for i, item in enumerate(raw):
        if isinstance(item, Mapping):
            item = [item.get("prompt_len"), item.get("new_tokens"), item.get("batch_size")]
        if isinstance(item, (str, bytes)) or not isinstance(item, Iterable) or len(
                item := list(item)) != 3:
            raise ValueError(f"{CONFIG_SHAPES}[{i}] = {item!r} is not a "
                             "[prompt_len, new_tokens, batch_size] triple")
        shapes.append(WarmupShape(*(_positive_int(v, f"{CONFIG_SHAPES}[{i}]") for v in item)))
    return shapes


def warmup_shapes(additional_config: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> list[WarmupShape]:
    """The configured shapes: additional_config, else the environment, else the
    default (64, 20, 4); duplicates dropped, sorted by prompt length then new tokens."""
    shapes = shapes_from_config(additional_config)
    if shapes is None:
        shapes = shapes_from_env(environ)
    if shapes is None:
        shapes = [WarmupShape(*(int(x) for x in DEFAULT_SHAPES_TEXT))]
    return sorted(set(shapes), key=lambda s: (s.prompt_len, s.new_tokens, s.batch_size))


def check_shapes(shapes: list[WarmupShape], max_model_len: int) -> None:
    """Every shape must fit the model's context: prompt length + new tokens ≤ max_model_len."""
    too_long = [s for s in shapes if s.prompt_len + s.new_tokens > max_model_len]
    if too_long:
        raise ValueError(
            f"warmup shapes {describe(too_long)} need prompt_len + new_tokens ≤ "
            f"max_model_len={max_model_len}; raise --max-model-len or shorten the shapes "
            f"({ENV_PROMPT_LENS}/{ENV_NEW_TOKENS} or {CONFIG_SHAPES})"
        )


def _given(additional_config: Mapping[str, Any] | None, key: str, env: str,
           environ: Mapping[str, str] | None) -> tuple[Any, str] | None:
    """(value, where it was given) from additional_config (wins), else the
    environment; None when neither gives it."""
    environ = os.environ if environ is None else environ
    section = (additional_config or {}).get(CONFIG_SECTION) or {}
    if isinstance(section, Mapping) and section.get(key) is not None:
        return section[key], f"additional_config.{PLUGIN}.{key}"
    if environ.get(env, "").strip():
        return environ[env], env
    return None


def _setting(additional_config: Mapping[str, Any] | None, key: str, env: str,
             default: str, choices: Iterable[str], environ: Mapping[str, str] | None) -> str:
    """A choice from additional_config (wins), else the environment, else the default."""
    given = _given(additional_config, key, env, environ)
    if given is None:
        return default
    value, where = given
    choices = tuple(choices)
    text = str(value).strip().lower()
    if text not in choices:
        raise ValueError(f"{where}={value!r}; choose one of {', '.join(choices)}")
    return text


def batching_mode(additional_config: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> str:
    """``static`` or ``continuous``."""
    return _setting(additional_config, "mode", ENV_MODE, "static", MODES, environ)


def compile_backend(additional_config: Mapping[str, Any] | None = None,
                    environ: Mapping[str, str] | None = None) -> str:
    """The torch.compile backend of the per-shape graphs."""
    from vllm_spyre_like.graphs import BACKENDS

    return _setting(additional_config, "compile_backend", ENV_BACKEND, "inductor",
                    BACKENDS, environ)


def batch_wait_ms(additional_config: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> float:
    """How long static batching may hold a new batch for more requests (0: never)."""
    given = _given(additional_config, "batch_wait_ms", ENV_BATCH_WAIT, environ)
    if given is None:
        return DEFAULT_BATCH_WAIT_MS
    value, where = given
    try:
        number = float(str(value).strip()) if not isinstance(value, bool) else -1.0
    except ValueError:
        number = -1.0
    if not 0 <= number <= 60_000:
        raise ValueError(f"{where}={value!r}; give milliseconds from 0 to 60000")
    return number
