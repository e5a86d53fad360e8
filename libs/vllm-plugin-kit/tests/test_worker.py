"""The host worker's arithmetic: threads and the activation reserve."""

from __future__ import annotations

import pytest
from vllm_plugin_kit.settings import thread_count, usable_cores


def test_threads_follow_the_setting_then_the_users_omp_then_the_cores(monkeypatch):
    from vllm.utils.torch_utils import OMP_NUM_THREADS_SET_BY_VLLM

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(OMP_NUM_THREADS_SET_BY_VLLM, raising=False)
    assert thread_count(3, 2, 1) == 3
    assert thread_count(None, 1, 1) == usable_cores()
    assert thread_count(None, 64, 2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert thread_count(None, 1, 1) == 5
    assert thread_count(2, 1, 1) == 2
    # vLLM's own setting for its workers is not the user's choice
    monkeypatch.setenv(OMP_NUM_THREADS_SET_BY_VLLM, "1")
    assert thread_count(None, 1, 1) == usable_cores()


@pytest.mark.parametrize("tokens", [512, 2048])
def test_activation_reserve_grows_with_the_batch(tokens):
    from types import SimpleNamespace

    import torch
    from vllm_plugin_kit.worker import activation_reserve

    hf = SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536)
    model = SimpleNamespace(hf_text_config=hf, get_hidden_size=lambda: 576,
                            get_head_size=lambda: 64, dtype=torch.float32,
                            get_vocab_size=lambda: 49152)
    config = SimpleNamespace(model_config=model, scheduler_config=SimpleNamespace(
        max_num_batched_tokens=tokens, max_num_seqs=8))
    per_token = (4 * 576 + (9 + 6) * 64 + 2 * 1536) * 4
    assert activation_reserve(config) == 2 * (tokens * per_token + 8 * 49152 * 4)
