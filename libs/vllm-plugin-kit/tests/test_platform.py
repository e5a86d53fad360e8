"""What every host stand-in refuses or reports at start-up, before an engine exists."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from vllm_plugin_kit.platform import HostPlatform
from vllm_plugin_kit.settings import SettingsTable, device_settings


def _platform(wrapper: str | None) -> type[HostPlatform]:
    return type("DevicePlatform", (HostPlatform,), {
        "plugin": "device", "distribution": "vllm-device", "version": "0",
        "settings": SettingsTable("device", device_settings("VLLM_DEVICE")),
        "worker_cls": "vllm_device.worker.Worker", "punica_wrapper": wrapper,
        "attention_backend": "vllm_plugin_kit.attention.HostAttentionBackend"})


def _config(**overrides) -> SimpleNamespace:
    config = SimpleNamespace(
        additional_config={}, model_config=None, lora_config=None, speculative_config=None,
        parallel_config=SimpleNamespace(worker_cls="auto", disable_custom_all_reduce=False,
                                        enable_dbo=False),
        scheduler_config=SimpleNamespace(async_scheduling=True),
        cache_config=SimpleNamespace(block_size=16, user_specified_block_size=True,
                                     cache_dtype="auto"))
    config.__dict__.update(overrides)
    return config


def test_lora_is_refused_up_front_without_a_punica_wrapper():
    with pytest.raises(ValueError, match="vllm-device does not run LoRA adapters"):
        _platform(None).configure_host(_config(lora_config=object()))
    with pytest.raises(NotImplementedError, match="vllm-device does not run LoRA"):
        _platform(None).get_punica_wrapper()
    assert _platform("my.Wrapper").get_punica_wrapper() == "my.Wrapper"


def test_asynchronous_scheduling_is_turned_off_with_a_word(caplog, monkeypatch):
    platform = _platform(None)
    monkeypatch.setattr(platform, "update_block_size_for_backend", classmethod(lambda c, v: None))
    config = _config()
    with caplog.at_level("WARNING"):
        platform.configure_host(config)
    assert config.scheduler_config.async_scheduling is False
    assert "asynchronous scheduling is off" in caplog.text


def test_a_kv_cache_dtype_the_attention_does_not_store_is_refused_up_front():
    config = _config()
    config.cache_config.cache_dtype = "fp8"
    with pytest.raises(ValueError, match=r"vllm-device does not store the KV cache as 'fp8'.*"
                                         r"'auto', 'bfloat16', 'float32'"):
        _platform(None).configure_host(config)


def test_a_speculative_method_the_platform_does_not_run_is_refused_up_front(monkeypatch):
    ngram, eagle = SimpleNamespace(method="ngram"), SimpleNamespace(method="eagle")
    with pytest.raises(ValueError, match=r"vllm-device does not run speculative decoding with "
                                         r"method 'ngram' \(--speculative-config\)$"):
        _platform(None).configure_host(_config(speculative_config=ngram))
    platform = _platform(None)
    monkeypatch.setattr(platform, "speculative_methods", ("ngram",))
    monkeypatch.setattr(platform, "update_block_size_for_backend", classmethod(lambda c, v: None))
    with pytest.raises(ValueError, match=r"method 'eagle' .*it runs method 'ngram' only"):
        platform.configure_host(_config(speculative_config=eagle))
    platform.configure_host(_config(speculative_config=ngram))
