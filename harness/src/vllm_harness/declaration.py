"""Platforms found through their entry points, and what each declares.

A plugin ships ``capabilities.toml`` next to the module its
``vllm.platform_plugins`` entry point names (data, not code): which platform
class it activates, how it is selected, the engine settings the suite should
use, and which features it claims. One declaration may hold several profiles
(for example two scheduling modes); each profile is one scoreboard column.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from vllm_harness.features import FEATURES, SUITES, expand
from vllm_harness.models import VARIANTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GROUP = "vllm.platform_plugins"
FILENAME = "capabilities.toml"
HARDWARE = ("real", "emulated")
_TOP_KEYS = {"schema", "platform", "engine", "features", "profiles"}
_PLATFORM_KEYS = {"class", "hardware", "active_by_default", "activation_log", "select_env",
                  "deselect_env"}
_ENGINE_KEYS = {"model", "model_from", "dtypes", "block_size", "max_model_len", "env", "args",
                "server_args", "unservable_request"}
_FEATURE_KEYS = {"claims", "not_observable"}


class DeclarationError(ValueError):
    """A capability declaration that is missing or does not follow the schema."""


@dataclass
class Profile:
    """One way to run a platform: one engine configuration, one scoreboard column."""

    entry_point: str
    name: str
    package: str
    version: str
    platform_class: str
    hardware: str
    active_by_default: bool
    activation_log: str
    select_env: dict[str, str]
    deselect_env: dict[str, str]
    dtypes: list[str]
    block_size: int
    max_model_len: int
    env: dict[str, str]
    args: dict[str, Any]
    server_args: list[str]
    unservable_request: dict[str, Any] | None
    claims: set[str]
    not_observable: dict[str, str] = field(default_factory=dict)
    #: the harness model variant the suites run (``vllm_harness.models.VARIANTS``)
    model: str = "full"
    #: ``module:function`` that writes the checkpoint the suites run from ``model``
    #: (:func:`vllm_harness.models.derive`), with its keyword arguments; "" for none
    model_from: str = ""
    model_from_args: dict[str, str] = field(default_factory=dict)
    #: the suites this profile runs (all by default)
    suites: list[str] = field(default_factory=lambda: list(SUITES))

    @property
    def column(self) -> str:
        return self.entry_point if self.name == "default" else f"{self.entry_point}/{self.name}"

    @property
    def file_stem(self) -> str:
        """The column as a file name: results and logs of this profile start with it."""
        return self.column.replace("/", "__")

    @property
    def model_name(self) -> str:
        """The model as people read it: the harness variant, and what derives from it."""
        return f"{self.model} via {self.model_from}" if self.model_from else self.model

    @property
    def runs_default_model(self) -> bool:
        """The default model itself, neither another variant nor derived from it."""
        return self.model == "full" and not self.model_from

    def engine_args(self) -> dict[str, Any]:
        """The ``vllm.LLM`` keyword arguments the declaration sets for every engine."""
        return {"max_model_len": self.max_model_len, "block_size": self.block_size,
                **self.args}

    def claims_feature(self, feature: str) -> bool:
        if feature in self.claims:
            return True
        return any(c.endswith(".*") and feature.startswith(c[:-1]) for c in self.claims)

    def process_env(self) -> dict[str, str]:
        """What a process needs in its environment to run this profile alone."""
        return {"VLLM_PLUGINS": self.entry_point, **self.select_env, **self.env}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise DeclarationError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _str_dict(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DeclarationError(f"{where} must be a table of strings")
    return dict(value)


def _model_from(value: Any, where: str) -> tuple[str, dict[str, str]]:
    """``"module:function"`` or ``{ call = "module:function", args = {...} }``."""
    if isinstance(value, dict):
        _check_keys(value, {"call", "args"}, where)
        call, args = value.get("call"), _str_dict(value.get("args", {}), f"{where} args")
    else:
        call, args = value, {}
    module, _, function = call.partition(":") if isinstance(call, str) else ("", "", "")
    if not (module and function.isidentifier()):
        raise DeclarationError(f"{where}: {call!r} is not \"module:function\"")
    return call, args


def parse(data: dict[str, Any], entry_point: str, package: str, version: str,
          source: str) -> list[Profile]:
    """The profiles of one declaration, validated."""
    _check_keys(data, _TOP_KEYS, source)
    if data.get("schema") != 1:
        raise DeclarationError(f"{source}: schema = 1 expected, found {data.get('schema')!r}")
    platform = data.get("platform", {})
    _check_keys(platform, _PLATFORM_KEYS, f"{source} [platform]")
    for key in ("class", "hardware", "active_by_default", "activation_log"):
        if key not in platform:
            raise DeclarationError(f"{source} [platform]: {key} is required")
    if platform["hardware"] not in HARDWARE:
        raise DeclarationError(f"{source} [platform]: hardware must be one of {HARDWARE}")
    base = {"engine": data.get("engine", {}), "features": data.get("features", {})}
    profiles = data.get("profiles") or {"default": {}}
    out = []
    for name, over in profiles.items():
        where = f"{source} [profiles.{name}]" if "profiles" in data else source
        _check_keys(over, {"engine", "features", "hardware", "suites"}, where)
        merged = _merge(base, {k: v for k, v in over.items() if k != "hardware"})
        engine, features = merged["engine"], merged["features"]
        _check_keys(engine, _ENGINE_KEYS, f"{where} [engine]")
        _check_keys(features, _FEATURE_KEYS, f"{where} [features]")
        claims = expand(list(features.get("claims", [])), f"{where} [features] claims")
        not_observable = _str_dict(features.get("not_observable", {}),
                                   f"{where} [features] not_observable")
        overlap = claims & set(not_observable)
        if overlap:
            raise DeclarationError(
                f"{where}: {sorted(overlap)} both claimed and declared not observable")
        expand(list(not_observable), f"{where} [features] not_observable")
        unservable = engine.get("unservable_request")
        if "robustness.unservable" in claims and not unservable:
            raise DeclarationError(f"{where}: claims robustness.unservable but names no "
                                   "[engine] unservable_request to send")
        if unservable and not {"prompt_tokens", "max_tokens"} <= set(unservable):
            raise DeclarationError(f"{where}: [engine] unservable_request needs prompt_tokens "
                                   "and max_tokens (and may give the reason the error names)")
        suites = list(over.get("suites", SUITES))
        unknown_suites = set(suites) - set(SUITES)
        if unknown_suites:
            raise DeclarationError(f"{where}: unknown suite(s) {sorted(unknown_suites)}; "
                                   f"known: {', '.join(SUITES)}")
        outside = sorted(c for c in claims
                         if c in FEATURES and FEATURES[c].judging_suite not in suites)
        if outside:
            raise DeclarationError(f"{where}: claims {outside} of suites the profile does not "
                                   f"run (it runs {', '.join(suites)})")
        dtypes = list(engine.get("dtypes", ["float32"]))
        model = engine.get("model", "full")
        if model not in VARIANTS:
            raise DeclarationError(f"{where} [engine] model: {model!r} is not a harness model; "
                                   f"use one of {', '.join(sorted(VARIANTS))}")
        model_from, model_from_args = (
            _model_from(engine["model_from"], f"{where} [engine] model_from")
            if "model_from" in engine else ("", {}))
        out.append(Profile(
            entry_point=entry_point, name=name, package=package, version=version,
            platform_class=platform["class"],
            hardware=over.get("hardware", platform["hardware"]),
            active_by_default=bool(platform["active_by_default"]),
            activation_log=platform["activation_log"],
            select_env=_str_dict(platform.get("select_env", {}), f"{source} select_env"),
            deselect_env=_str_dict(platform.get("deselect_env", {}), f"{source} deselect_env"),
            dtypes=dtypes,
            block_size=int(engine.get("block_size", 16)),
            max_model_len=int(engine.get("max_model_len", 512)),
            env=_str_dict(engine.get("env", {}), f"{where} [engine] env"),
            args=dict(engine.get("args", {})),
            server_args=[str(a) for a in engine.get("server_args", [])],
            unservable_request=engine.get("unservable_request"),
            claims=claims,
            not_observable=not_observable,
            model=model,
            model_from=model_from,
            model_from_args=model_from_args,
            suites=[name for name in SUITES if name in suites],
        ))
        if out[-1].hardware not in HARDWARE:
            raise DeclarationError(f"{where}: hardware must be one of {HARDWARE}")
    return out


def _module_of(ep: EntryPoint) -> str:
    return ep.value.split(":", 1)[0].split(".", 1)[0]


def load(ep: EntryPoint) -> list[Profile]:
    """The profiles an installed entry point declares."""
    package = ep.dist.name if ep.dist else _module_of(ep)
    version = ep.dist.version if ep.dist else "?"
    source = f"{package} ({_module_of(ep)}/{FILENAME})"
    try:
        text = resources.files(_module_of(ep)).joinpath(FILENAME).read_text()
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise DeclarationError(
            f"platform plugin {ep.name!r} from {package} ships no {FILENAME} next to "
            f"{_module_of(ep)}/__init__.py, so the harness cannot judge it") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DeclarationError(f"{source}: {e}") from e
    return parse(data, ep.name, package, version, source)


def discover(names: list[str] | None = None) -> list[Profile]:
    """Every profile of every installed platform plugin (or of those named)."""
    eps = sorted(entry_points(group=GROUP), key=lambda e: e.name)
    if names:
        missing = set(names) - {e.name for e in eps}
        if missing:
            installed = ", ".join(e.name for e in eps) or "none"
            raise DeclarationError(
                f"no installed platform plugin named {sorted(missing)}; installed: {installed}")
        eps = [e for e in eps if e.name in names]
    return [p for ep in eps for p in load(ep)]


def find(column: str) -> Profile:
    """The profile behind a scoreboard column: ``entry_point`` or ``entry_point/profile``."""
    entry_point = column.split("/", 1)[0]
    for profile in discover([entry_point]):
        if profile.column == column:
            return profile
    raise DeclarationError(f"platform {entry_point!r} declares no profile for {column!r}")
