"""LoRA adapters of the default model, offline and served: greedy float32 ids
equal transformers with peft's adapter, and a batch that mixes two adapters
and the base model gives each request its own answer.

The adapters (:data:`vllm_harness.models.ADAPTERS`) are written once per
machine with peft from seeded random weights, so each changes the model's
answers; peft runs them as the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from vllm_harness.declaration import Profile
from vllm_harness.fixtures import SERVED_NAME, make_llm, serving_config
from vllm_harness.models import ADAPTER_RANK, ADAPTERS, prepare_adapter

pytestmark = pytest.mark.xdist_group("lora")

PROMPTS = ["The capital of France is", "Once upon a time", "def add(a, b):"]
TOKENS = 12
#: two adapters in one batch: every adapter slot of the engine holds one, the
#: case where a request without an adapter is easiest to get wrong
LORA_ARGS = {"enable_lora": True, "max_loras": len(ADAPTERS), "max_lora_rank": ADAPTER_RANK}


def _peft_greedy(model_dir: str, adapter: str | None) -> list[list[int]]:
    """transformers' greedy ids of every prompt, with the adapter through peft
    (end of text ignored, as the engine is asked to)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(prepare_adapter(adapter)))
    model.eval()
    out = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            tokens: list[int] = []
            for _ in range(TOKENS):
                tokens.append(int(model(torch.cat((ids, torch.tensor([tokens],
                                                                     dtype=ids.dtype)), 1)
                                        ).logits[0, -1].argmax()))
            out.append(tokens)
    return out


@pytest.fixture(scope="module")
def references(model_dir: str) -> dict[str | None, list[list[int]]]:
    refs = {name: _peft_greedy(model_dir, name) for name in [None, *ADAPTERS]}
    for name in ADAPTERS:  # the adapters are worth testing only if they change the answers
        assert refs[name] != refs[None], f"adapter {name} leaves the model's answers as they are"
    return refs


def _request(name: str) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, list(ADAPTERS).index(name) + 1, str(prepare_adapter(name)))


@pytest.fixture(scope="module")
def lora_llm(engines: Any, profile: Profile, model_dir: str) -> Any:
    return engines.get("lora-fp32", lambda: make_llm(profile, model_dir, dtype="float32",
                                                     **LORA_ARGS))


def _ids(outs: list[Any]) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.mark.feature("lora.offline")
def test_each_adapter_equals_peft(lora_llm: Any, references: dict):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=TOKENS, ignore_eos=True)
    for name in ADAPTERS:
        got = _ids(lora_llm.generate(PROMPTS, params, lora_request=_request(name)))
        assert got == references[name], f"adapter {name}: {got} against peft's {references[name]}"


@pytest.mark.feature("lora.offline")
def test_a_mixed_batch_gives_each_request_its_own_answer(lora_llm: Any, references: dict):
    from vllm import SamplingParams

    names: list[str | None] = [None, *ADAPTERS]
    prompts = [p for p in PROMPTS for _ in names]
    loras = [_request(n) if n else None for _ in PROMPTS for n in names]
    outs = _ids(lora_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=TOKENS,
                                                          ignore_eos=True),
                                  lora_request=loras))
    wrong = [f"{prompt!r} with {name or 'no adapter'}"
             for i, (prompt, name) in enumerate((p, n) for p in PROMPTS for n in names)
             if outs[i] != references[name][PROMPTS.index(prompt)]]
    assert not wrong, "in a batch of two adapters and the base model, wrong tokens for " + \
        ", ".join(wrong)


@pytest.fixture(scope="module")
def lora_server(profile: Profile, model_dir: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``vllm serve`` in float32 with both adapters, loading more at run time allowed."""
    modules = [f"{name}={prepare_adapter(name)}" for name in ADAPTERS]
    log = tmp_path_factory.mktemp("lora-server") / "serve.log"
    with serving_config(profile, model_dir, log, ["--lora-modules", *modules],
                        {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}, dtype="float32",
                        **LORA_ARGS) as url:
        yield url


def _served_ids(url: str, model: str) -> list[list[int]]:
    r = requests.post(f"{url}/v1/completions", timeout=120, json={
        "model": model, "prompt": PROMPTS, "max_tokens": TOKENS, "temperature": 0,
        "ignore_eos": True, "return_token_ids": True})
    assert r.status_code == 200, f"{model}: HTTP {r.status_code}: {r.text[:300]}"
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    return [c["token_ids"] for c in choices]


@pytest.mark.feature("lora.served")
def test_served_adapters_equal_peft(lora_server: str, references: dict):
    listed = [m["id"] for m in requests.get(f"{lora_server}/v1/models", timeout=10).json()["data"]]
    assert set(listed) == {SERVED_NAME, *ADAPTERS}, listed
    for name in [None, *ADAPTERS]:
        got = _served_ids(lora_server, name or SERVED_NAME)
        assert got == references[name], f"{name or 'base'}: {got} against {references[name]}"


@pytest.mark.feature("lora.runtime_load")
def test_an_adapter_loaded_at_run_time(lora_server: str, references: dict):
    name = "lora-b"
    body = {"lora_name": "late", "lora_path": str(prepare_adapter(name))}
    r = requests.post(f"{lora_server}/v1/load_lora_adapter", json=body, timeout=120)
    assert r.status_code == 200, f"loading: HTTP {r.status_code}: {r.text[:300]}"
    assert _served_ids(lora_server, "late") == references[name]
    r = requests.post(f"{lora_server}/v1/unload_lora_adapter", json={"lora_name": "late"},
                      timeout=60)
    assert r.status_code == 200, f"unloading: HTTP {r.status_code}: {r.text[:300]}"
    r = requests.post(f"{lora_server}/v1/completions", timeout=60,
                      json={"model": "late", "prompt": "Hi", "max_tokens": 2})
    assert r.status_code == 404, f"an unloaded adapter still answers: HTTP {r.status_code}"
