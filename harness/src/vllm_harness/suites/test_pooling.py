"""Embeddings: an encoder-only embedding model offline and served, and the
default decoder model run as an embedder, each held to transformers.

The embedding model (all-MiniLM-L6-v2, BERT; :func:`vllm_harness.models.
prepare_embedding_model`) declares its pooling in its sentence-transformers
files (mean over the tokens, then L2 normalisation); the reference reads those
files and applies them to transformers' hidden states. A decoder run with
``runner="pooling"`` embeds by its last token, normalised (vLLM's default).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vllm_harness.declaration import Profile
from vllm_harness.fixtures import SERVED_NAME, Engines, make_llm, serving_config

pytestmark = pytest.mark.xdist_group("pooling")

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.",
         "The girl is carrying a baby.", "A cheetah is running behind its prey.", "hi",
         "Paris is the capital and largest city of France, on the Seine, in the north of "
         "the country."]
#: cosine to the reference, in float32
MIN_COSINE = 0.9999
#: the embedding model's own limit (its sentence-transformers max_seq_length)
EMBEDDING_MAX_LEN = 256


@pytest.fixture(scope="module")
def embedding_dir() -> str:
    from vllm_harness.models import prepare_embedding_model

    return str(prepare_embedding_model(quiet=True))


def _sentence_transformers_reference(model_dir: str, texts: list[str]) -> Any:
    """transformers' hidden states pooled and normalised as the model's
    sentence-transformers files say (``1_Pooling``, a ``Normalize`` module)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = Path(model_dir)
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    modules = [m["type"] for m in json.loads((folder / "modules.json").read_text())]
    assert pooling["pooling_mode_mean_tokens"], "the reference implements mean pooling only"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch.attention_mask[..., None].to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    if "sentence_transformers.models.Normalize" in modules:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled


@pytest.fixture(scope="module")
def reference(embedding_dir: str) -> Any:
    return _sentence_transformers_reference(embedding_dir, TEXTS)


def _close(got: Any, want: Any, what: str) -> None:
    import torch

    got = torch.tensor(got, dtype=torch.float32)
    assert got.shape == want.shape, f"{what}: embeddings of shape {tuple(got.shape)}, " \
        f"transformers' {tuple(want.shape)}"
    cosine = torch.nn.functional.cosine_similarity(got, want)
    worst = int(cosine.argmin())
    assert float(cosine[worst]) >= MIN_COSINE, (
        f"{what}: {TEXTS[worst]!r} at cosine {float(cosine[worst]):.6f} to transformers "
        f"(at least {MIN_COSINE} asked)")
    norms = got.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4), f"{what}: norms {norms}"


@pytest.fixture(scope="module")
def embed_llm(engines: Engines, profile: Profile, embedding_dir: str) -> Any:
    return engines.get("embed", lambda: make_llm(profile, embedding_dir, dtype="float32",
                                                 runner="pooling",
                                                 max_model_len=EMBEDDING_MAX_LEN))


@pytest.mark.feature("pooling.embed")
def test_embeddings_equal_sentence_transformers(embed_llm: Any, reference: Any):
    outs = embed_llm.embed(TEXTS, use_tqdm=False)
    _close([o.outputs.embedding for o in outs], reference, "LLM.embed")
    # one at a time, as in a batch: no request's padding reaches another
    alone = embed_llm.embed(TEXTS[-1:], use_tqdm=False)
    _close([o.outputs.embedding for o in outs[:-1]] + [alone[0].outputs.embedding],
           reference, "LLM.embed, the long text alone")


@pytest.fixture(scope="module")
def embedding_server(profile: Profile, embedding_dir: str,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("embedding-server") / "serve.log"
    with serving_config(profile, embedding_dir, log, dtype="float32", runner="pooling",
                        max_model_len=EMBEDDING_MAX_LEN) as url:
        yield url


@pytest.mark.feature("pooling.served")
def test_served_embeddings_equal_sentence_transformers(embedding_server: str, reference: Any,
                                                       embedding_dir: str):
    import openai
    from transformers import AutoTokenizer

    client = openai.OpenAI(base_url=f"{embedding_server}/v1", api_key="none", max_retries=0)
    r = client.embeddings.create(model=SERVED_NAME, input=TEXTS)
    _close([d.embedding for d in sorted(r.data, key=lambda d: d.index)], reference,
           "/v1/embeddings")
    tokens = sum(len(ids) for ids in AutoTokenizer.from_pretrained(embedding_dir)(TEXTS).input_ids)
    assert r.usage.prompt_tokens == tokens, f"usage {r.usage.prompt_tokens}, {tokens} tokens"


@pytest.fixture(scope="module")
def decoder_embed_llm(engines: Engines, profile: Profile, model_dir: str) -> Any:
    return engines.get("decoder-embed", lambda: make_llm(profile, model_dir, dtype="float32",
                                                         runner="pooling"))


@pytest.mark.feature("pooling.decoder")
def test_decoder_embeddings_are_its_last_hidden_state(decoder_embed_llm: Any, model_dir: str):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = torch.stack([torch.nn.functional.normalize(
            model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0, -1], dim=-1)
            for t in TEXTS])
    outs = decoder_embed_llm.embed(TEXTS, use_tqdm=False)
    _close([o.outputs.embedding for o in outs], want, "the decoder as an embedder")
