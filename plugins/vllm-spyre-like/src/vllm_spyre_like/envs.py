"""The settings of spyre_like: one table, resolved once into :class:`SpyreLikeConfig`.

Warmup shapes are (prompt length, new tokens, batch size) triples, given like
vllm-spyre's: three comma-separated environment variables zipped together,
or ``--additional-config '{"spyre_like": {"warmup_shapes": [[64, 20, 4]]}}'``,
which wins. Every other setting is one value, from ``additional_config``
(wins) or the environment. The platform resolves them once, in the process
that builds the configuration, and writes the result back into
``additional_config``, which vLLM hands to the scheduler, the workers and
their model runners: every part reads the same :class:`SpyreLikeConfig`
(:meth:`SpyreLikeConfig.of`), whatever their own environment holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from vllm_plugin_kit.settings import (
    Setting,
    SettingsTable,
    choice,
    device_settings,
    number_between,
    parse_flag,
    parse_positive_int,
)

from vllm_spyre_like import ENV_ENABLE, PLUGIN

ENV_MEMORY = "VLLM_SPYRE_LIKE_DEVICE_MEMORY"
ENV_PROMPT_LENS = "VLLM_SPYRE_LIKE_WARMUP_PROMPT_LENS"
ENV_NEW_TOKENS = "VLLM_SPYRE_LIKE_WARMUP_NEW_TOKENS"
ENV_BATCH_SIZES = "VLLM_SPYRE_LIKE_WARMUP_BATCH_SIZES"
ENV_MODE = "VLLM_SPYRE_LIKE_MODE"
ENV_BACKEND = "VLLM_SPYRE_LIKE_COMPILE_BACKEND"
ENV_BATCH_WAIT = "VLLM_SPYRE_LIKE_BATCH_WAIT_MS"
MODES = ("static", "continuous")
#: torch.compile backends a user may choose; "eager" traces (one graph per
#: shape, as on the device) but generates no code, for debugging.
BACKENDS = ("inductor", "aot_eager", "eager")
CONFIG_SHAPES = f"additional_config.{PLUGIN}.warmup_shapes"
#: Requests sent together reach the engine one by one; this long a wait lets
#: them share one padded batch instead of each partial batch paying the full shape.
DEFAULT_BATCH_WAIT_MS = 50.0


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


#: Used when neither the environment nor additional_config gives shapes.
DEFAULT_SHAPES = (WarmupShape(64, 20, 4),)


def _int_list(value: Any, where: str) -> tuple[int, ...]:
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{where} is empty; give comma-separated positive integers, e.g. '64'")
    return tuple(parse_positive_int(p, where) for p in parts)


def _shape_list(raw: Any, where: str) -> tuple[WarmupShape, ...]:
    if isinstance(raw, str | bytes) or not isinstance(raw, Iterable) or not list(raw):
        raise ValueError(f"{where} must be a non-empty list of "
                         f"[prompt_len, new_tokens, batch_size] triples, not {raw!r}")
    shapes = []
    for i, item in enumerate(raw):
        if isinstance(item, Mapping):
            item = [item.get("prompt_len"), item.get("new_tokens"), item.get("batch_size")]
        if isinstance(item, str | bytes) or not isinstance(item, Iterable) or len(
                item := list(item)) != 3:
            raise ValueError(f"{where}[{i}] = {item!r} is not a "
                             "[prompt_len, new_tokens, batch_size] triple")
        shapes.append(WarmupShape(*(parse_positive_int(v, f"{where}[{i}]") for v in item)))
    return tuple(shapes)


SETTINGS = SettingsTable(PLUGIN, [
    Setting(None, ENV_ENABLE, parse_flag, None,
            "`1` selects the platform without `VLLM_PLUGINS`", "off"),
    *device_settings(ENV_ENABLE),
    Setting("mode", ENV_MODE, choice(*MODES), "static",
            "`static` batching by warmup shapes, or `continuous` batching"),
    Setting("warmup_shapes", None, _shape_list, None,
            "`[[prompt_len, new_tokens, batch_size], ...]` (static batching)",
            "the three variables below, else `[[64, 20, 4]]`"),
    Setting(None, ENV_PROMPT_LENS, _int_list, None,
            "warmup prompt lengths, comma-separated, zipped with the next two", "—"),
    Setting(None, ENV_NEW_TOKENS, _int_list, None, "warmup new-token counts", "—"),
    Setting(None, ENV_BATCH_SIZES, _int_list, None, "warmup batch sizes", "—"),
    Setting("compile_backend", ENV_BACKEND, choice(*BACKENDS), "inductor",
            "`torch.compile` backend of the per-shape graphs (`eager` traces only)"),
    Setting("batch_wait_ms", ENV_BATCH_WAIT, number_between(0, 60_000, "milliseconds"),
            DEFAULT_BATCH_WAIT_MS,
            "how long static batching holds a batch that could still take more requests"),
])


def _shapes_from_env(values: Mapping[str, Any]) -> tuple[WarmupShape, ...] | None:
    names = (ENV_PROMPT_LENS, ENV_NEW_TOKENS, ENV_BATCH_SIZES)
    given = [name for name in names if values[name] is not None]
    if not given:
        return None
    missing = [name for name in names if name not in given]
    if missing:
        raise ValueError(
            f"warmup shapes need all of {', '.join(names)}; {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set")
    lists = [values[name] for name in names]
    if len({len(v) for v in lists}) != 1:
        counts = ", ".join(f"{name} has {len(v)}" for name, v in zip(names, lists))
        raise ValueError(f"warmup shapes: the three lists must have the same length ({counts})")
    return tuple(WarmupShape(*triple) for triple in zip(*lists))


@dataclass(frozen=True)
class SpyreLikeConfig:
    """Every setting of the plugin, validated, as one value."""

    device_memory: int
    num_threads: int | None
    mode: str
    #: sorted by prompt length, then new tokens; duplicates dropped
    warmup_shapes: tuple[WarmupShape, ...]
    compile_backend: str
    batch_wait_ms: float

    @classmethod
    def load(cls, additional_config: Mapping[str, Any] | None = None,
             environ: Mapping[str, str] | None = None) -> SpyreLikeConfig:
        values = SETTINGS.resolve(additional_config, environ)
        shapes = values["warmup_shapes"] or _shapes_from_env(values) or DEFAULT_SHAPES
        return cls(
            device_memory=values["device_memory"], num_threads=values["num_threads"],
            mode=values["mode"],
            warmup_shapes=tuple(sorted(set(shapes))),
            compile_backend=values["compile_backend"], batch_wait_ms=values["batch_wait_ms"],
        )

    @classmethod
    def of(cls, vllm_config: Any) -> SpyreLikeConfig:
        """The configuration's settings, as the platform resolved them."""
        return cls.load(vllm_config.additional_config)

    def section(self) -> dict[str, Any]:
        """The settings as a complete ``additional_config`` section: loaded from it,
        nothing is read from the environment again."""
        section = {
            "device_memory": self.device_memory, "mode": self.mode,
            "warmup_shapes": [list(s) for s in self.warmup_shapes],
            "compile_backend": self.compile_backend, "batch_wait_ms": self.batch_wait_ms,
        }
        if self.num_threads is not None:
            section["num_threads"] = self.num_threads
        return section


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


def check_shapes(shapes: Iterable[WarmupShape], max_model_len: int) -> None:
    """Every shape must fit the model's context: prompt length + new tokens ≤ max_model_len."""
    too_long = [s for s in shapes if s.prompt_len + s.new_tokens > max_model_len]
    if too_long:
        raise ValueError(
            f"warmup shapes {describe(too_long)} need prompt_len + new_tokens ≤ "
            f"max_model_len={max_model_len}; raise --max-model-len or shorten the shapes "
            f"({ENV_PROMPT_LENS}/{ENV_NEW_TOKENS} or {CONFIG_SHAPES})"
        )
