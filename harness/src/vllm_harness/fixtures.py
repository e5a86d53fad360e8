"""Shared fixtures of the suites: the default model, its transformers
reference, and one engine and one server per platform per session.

Engines and servers are expensive, so each is built once per session and its
tests are pinned to one pytest-xdist worker through an ``xdist_group`` of the
same name (``--dist loadgroup``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vllm_harness.declaration import Profile
from vllm_harness.env import IN_PROCESS_ENV

PROMPTS = [
    "The quick brown fox",
    "Hello, my name is",
    "1, 2, 3, 4,",
    "The capital of France is",
    "In a distant galaxy, a lone explorer discovered an ancient artifact that",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "The three primary colors are",
]
MAX_TOKENS = 24
SERVED_NAME = "harness-model"


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _declared_profile(request: pytest.FixtureRequest) -> Profile | None:
    """The profile under test; None where no profile is (a plugin's own tests
    that borrow these fixtures run the default model)."""
    try:
        return request.getfixturevalue("profile")
    except pytest.FixtureLookupError:
        return None


def _declared_model(request: pytest.FixtureRequest) -> str:
    """The harness model variant of the profile under test; the default model where
    no profile is."""
    profile = _declared_profile(request)
    return profile.model if profile else "full"


def _derived_if_declared(request: pytest.FixtureRequest, source: Path) -> str:
    """``source``, or the checkpoint the profile derives from it (``[engine] model_from``)."""
    from vllm_harness.models import derive

    profile = _declared_profile(request)
    if profile is None or not profile.model_from:
        return str(source)
    return str(derive(source, profile.model_from, profile.model_from_args))


def _source_model(request: pytest.FixtureRequest) -> Path:
    from vllm_harness.models import prepare

    return prepare(_declared_model(request), quiet=True)


@pytest.fixture(scope="session")
def source_model_dir(request: pytest.FixtureRequest) -> str:
    """The harness model the profile declares (``[engine] model``; the default model)."""
    return str(_source_model(request))


@pytest.fixture(scope="session")
def model_dir(request: pytest.FixtureRequest) -> str:
    """The model the suites run: the declared harness model, or the checkpoint the
    plugin writes from it (``[engine] model_from``, e.g. a quantized one). Plugins'
    own tests import it alone, so it depends on no other fixture of this module."""
    return _derived_if_declared(request, _source_model(request))


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """The first two layers of the default model, for fast checks."""
    from vllm_harness.models import prepare

    return str(prepare("tiny", quiet=True))


@pytest.fixture(scope="session")
def tp2_model_dir(request: pytest.FixtureRequest) -> str:
    """The profile's model in a form tensor parallelism 2 can split: the default
    model's "tp2" variant, the MoE model's "moe-tp2" (see models.py), as the
    profile derives it if it does."""
    from vllm_harness.models import TP2_FORM, prepare

    model = _declared_model(request)
    return _derived_if_declared(request, prepare(TP2_FORM.get(model, model), quiet=True))


def load_hf(model_dir: str) -> tuple[Any, Any]:
    """transformers' tokenizer and float32 model of ``model_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return tokenizer, model


@pytest.fixture(scope="session")
def hf_model(model_dir: str) -> tuple[Any, Any]:
    return load_hf(model_dir)


@pytest.fixture(scope="session")
def hf_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _greedy_by_hand(hf_model: tuple[Any, Any], prompts: list[str],
                    max_tokens: int) -> list[list[int]]:
    import torch

    tokenizer, model = hf_model
    out = []
    with torch.no_grad():
        for prompt in prompts:
            step_ids = tokenizer(prompt, return_tensors="pt").input_ids
            tokens: list[int] = []
            past = None
            for _ in range(max_tokens):  # by hand: generate() would suppress EOS, not ignore it
                result = model(step_ids, past_key_values=past, use_cache=True)
                past = result.past_key_values
                tokens.append(int(result.logits[0, -1].argmax()))
                step_ids = torch.tensor([[tokens[-1]]])
            out.append(tokens)
    return out


def reference_greedy(model_dir: str, hf: Callable[[], tuple[Any, Any]],
                     prompts: list[str] = PROMPTS,
                     max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """transformers' greedy continuation of every prompt on ``model_dir``, EOS ignored.

    Computed once per machine for a given model, prompt set, transformers and
    torch, and kept in the cache: every xdist worker and every platform profile
    compares against the same reference, and only the first pays for it
    (``hf`` loads the model only then).
    """
    import torch
    import transformers
    from filelock import FileLock

    from vllm_harness.models import MARKER, cache_root

    key = {"model": (Path(model_dir) / MARKER).read_text(), "prompts": prompts,
           "max_tokens": max_tokens, "transformers": transformers.__version__,
           "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root() / "references" / f"{Path(model_dir).name}-greedy-{digest}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if path.is_file():
            return json.loads(path.read_text())["greedy"]
        greedy = _greedy_by_hand(hf(), prompts, max_tokens)
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps({"key": key, "greedy": greedy}))
        staging.rename(path)
    return greedy


@pytest.fixture(scope="session")
def hf_greedy(request: pytest.FixtureRequest, model_dir: str) -> list[list[int]]:
    """transformers' greedy tokens on the profile's model (see :func:`reference_greedy`)."""
    return reference_greedy(model_dir, lambda: request.getfixturevalue("hf_model"))


@pytest.fixture(scope="session")
def source_hf_greedy(source_model_dir: str) -> list[list[int]]:
    """transformers' greedy tokens on the harness model a derived checkpoint comes from."""
    return reference_greedy(source_model_dir, lambda: load_hf(source_model_dir))


@pytest.fixture(scope="session")
def tp2_hf_greedy(tp2_model_dir: str) -> list[list[int]]:
    """transformers' greedy tokens on the model tensor parallelism 2 runs."""
    return reference_greedy(tp2_model_dir, lambda: load_hf(tp2_model_dir))


def engine_kwargs(profile: Profile, **overrides: Any) -> dict[str, Any]:
    """The engine arguments of this platform: the declaration's, then the test's."""
    return {"disable_log_stats": False, **profile.engine_args(), **overrides}


def make_llm(profile: Profile, model: str, **overrides: Any) -> Any:
    from vllm import LLM

    return LLM(model=model, **engine_kwargs(profile, **overrides))


def make_llm_apart(profile: Profile, model: str, **overrides: Any) -> Any:
    """:func:`make_llm` with the engine core in a process of its own. vLLM sets
    up a process's model-parallel groups once, for the first engine's model: a
    mixture of experts after a dense model in the same process finds no expert
    group. (Environment variables are cached once a core has started here, so
    the cache is dropped before the setting is changed.)"""
    from vllm import envs

    key = next(iter(IN_PROCESS_ENV))
    before = os.environ.get(key)
    envs.disable_envs_cache()
    os.environ[key] = "1"
    try:
        return make_llm(profile, model, **overrides)
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def shutdown(llm: Any) -> None:
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def _core_in_process(llm: Any) -> bool:
    from vllm.v1.engine.core_client import InprocClient

    return isinstance(getattr(getattr(llm, "llm_engine", None), "engine_core", None),
                      InprocClient)


class Engines:
    """Builds each engine configuration once per session, shuts all down at the end."""

    def __init__(self) -> None:
        self._engines: dict[str, Any] = {}

    def get(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._engines:
            self._engines[name] = build()
        return self._engines[name]

    def close(self) -> None:
        """Shuts the engines down: those with a core process side by side (each
        shutdown mostly waits, up to 5 s, for its process to exit), those whose
        core runs here one after another, since each tears down the process's
        distributed state, which they share."""
        engines = list(self._engines.values())
        self._engines.clear()
        here = [llm for llm in engines if _core_in_process(llm)]
        apart = [llm for llm in engines if not _core_in_process(llm)]
        with ThreadPoolExecutor(max_workers=max(1, len(apart))) as pool:
            waiting = pool.map(shutdown, apart)
            for llm in here:
                shutdown(llm)
            list(waiting)


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    pool = Engines()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def llm(engines: Engines, profile: Profile, model_dir: str) -> Any:
    """The platform's float32 engine with prefix caching: most suites share it."""
    return engines.get("fp32", lambda: make_llm(
        profile, model_dir, dtype="float32", enable_prefix_caching=True))


def server_dtype(profile: Profile) -> str:
    """The server runs the platform's preferred reduced precision, if it claims one."""
    for dtype in ("bfloat16", "float16"):
        if dtype in profile.dtypes:
            return dtype
    return profile.dtypes[0]


def cli_args(args: dict[str, Any]) -> list[str]:
    """Engine keyword arguments as ``vllm serve`` options."""
    out = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, dict | list):
            out += [flag, json.dumps(value)]
        else:
            out += [flag, str(value)]
    return out


#: Tool calling as a user serves a Hermes-style model: the default model's own
#: chat template with a Hermes tool prompt added (it renders the same without
#: tools, so every other test sees the model's template), and vLLM's parser.
TOOL_ARGS = ["--chat-template",
             str(Path(__file__).parent / "chat_templates" / "chatml_hermes_tools.jinja"),
             "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


@dataclass
class Server:
    url: str
    log: Path
    dtype: str
    max_model_len: int

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus series from /metrics, filtered by labels."""
        import requests

        body = requests.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in body.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


@contextlib.contextmanager
def serving(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``vllm serve`` with ``args`` on 127.0.0.1, its output in ``log``: its URL
    once /health answers (the test fails if it exits or is not healthy in 300
    s), stopped on leaving."""
    import requests

    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *args,
           "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n"
                            f"{log.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not healthy in 300 s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def serving_config(profile: Profile, model: str, log: Path, extra: list[str] | None = None,
                   env: dict[str, str] | None = None, **overrides: Any) -> Iterator[str]:
    """``vllm serve`` of ``model`` with the platform's engine arguments and
    ``overrides``, for a suite that needs a server of its own configuration.

    The configuration is built in this process first, so a platform that
    refuses it says why in the test (its ValueError), not in a server that
    never answers."""
    from vllm.engine.arg_utils import EngineArgs

    args = engine_kwargs(profile, **overrides)
    args.pop("disable_log_stats", None)
    EngineArgs(model=model, **args).create_engine_config()
    # served as a user serves it: the in-process setting is for the suites' LLMs
    environ = {k: v for k, v in os.environ.items() if k not in IN_PROCESS_ENV}
    with serving([model, "--served-model-name", SERVED_NAME, *cli_args(args), *(extra or []),
                  *profile.server_args], log, {**environ, **(env or {})}) as url:
        yield url


@pytest.fixture(scope="session")
def server(profile: Profile, model_dir: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``vllm serve`` for the whole session."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    dtype = server_dtype(profile)
    args = engine_kwargs(profile)
    args.pop("disable_log_stats", None)
    # served as a user serves it: the in-process setting is for the suites' LLMs
    env = {k: v for k, v in os.environ.items() if k not in IN_PROCESS_ENV}
    with serving([model_dir, "--served-model-name", SERVED_NAME, "--dtype", dtype,
                  *TOOL_ARGS, *cli_args(args), *profile.server_args], log, env) as url:
        yield Server(url, log, dtype, profile.max_model_len)


@pytest.fixture(scope="session")
def client(server: Server) -> Any:
    import openai

    return openai.OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=120)
