"""The plugin's own parts, without an engine: selection and settings.

The parts it takes from vllm-plugin-kit (attention, slot mapping, linear
layers, collectives) are checked against plain math in the kit's own tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The plugin is imported inside each test, so that this file's import order
# does not depend on whether a linter counts the package as first-party.

README = Path(__file__).resolve().parents[1] / "README.md"


def test_register_only_when_selected(monkeypatch):
    import vllm_spyre_like

    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    monkeypatch.delenv("VLLM_SPYRE_LIKE", raising=False)
    assert vllm_spyre_like.register() is None
    monkeypatch.setenv("VLLM_PLUGINS", "cpu_sim")
    assert vllm_spyre_like.register() is None
    monkeypatch.setenv("VLLM_PLUGINS", "cpu_sim,spyre_like")
    assert vllm_spyre_like.register() == vllm_spyre_like.PLATFORM
    monkeypatch.delenv("VLLM_PLUGINS")
    monkeypatch.setenv("VLLM_SPYRE_LIKE", "1")
    assert vllm_spyre_like.register() == vllm_spyre_like.PLATFORM


def test_device_settings_read_as_in_every_plugin():
    from vllm_plugin_kit.testing import check_device_settings

    from vllm_spyre_like.envs import SETTINGS

    check_device_settings(SETTINGS)


def test_readme_settings_table_is_current():
    """The README's table is generated from the settings (python -m vllm_plugin_kit
    readme README.md vllm_spyre_like.envs:SETTINGS)."""
    from vllm_plugin_kit.settings import readme_is_current

    from vllm_spyre_like.envs import SETTINGS

    assert readme_is_current(README, SETTINGS)


def test_settings_resolve_once_into_the_configuration():
    """The platform writes the resolved settings back into additional_config, so
    every process reads them from the configuration, not its own environment."""
    from vllm_spyre_like.envs import SpyreLikeConfig, WarmupShape

    env = {"VLLM_SPYRE_LIKE_MODE": "static", "VLLM_SPYRE_LIKE_DEVICE_MEMORY": "3GiB",
           "VLLM_SPYRE_LIKE_BATCH_WAIT_MS": "7"}
    config = SpyreLikeConfig.load({"spyre_like": {"warmup_shapes": [[32, 8, 2]]}}, env)
    assert config.warmup_shapes == (WarmupShape(32, 8, 2),)
    assert config.device_memory == 3 << 30 and config.batch_wait_ms == 7
    elsewhere = {"VLLM_SPYRE_LIKE_MODE": "continuous", "VLLM_SPYRE_LIKE_DEVICE_MEMORY": "1GiB"}
    assert SpyreLikeConfig.load({"spyre_like": config.section()}, elsewhere) == config


def test_unsupported_attention_features_name_the_plugin():
    from vllm_spyre_like.attention import SpyreLikeAttentionImpl

    with pytest.raises(NotImplementedError, match="spyre_like attention does not support"):
        SpyreLikeAttentionImpl(6, 8, 1.0, 2, alibi_slopes=[1.0] * 6)
