"""The plugin's own parts, without an engine: its settings, selection, layers and passes.

The parts it takes from vllm-plugin-kit (attention, slot mapping, linear
layers, collectives) are checked against plain math in the kit's own tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vllm_plugin_kit.settings import readme_is_current
from vllm_plugin_kit.testing import check_device_settings

from vllm_cpu_sim.attention import CpuSimAttentionImpl
from vllm_cpu_sim.envs import SETTINGS, SimConfig

README = Path(__file__).resolve().parents[1] / "README.md"


# ---------------------------------------------------------------- settings

def test_device_settings_read_as_in_every_plugin():
    check_device_settings(SETTINGS)


def test_readme_settings_table_is_current():
    """The README's table is generated from the settings (python -m vllm_plugin_kit
    readme README.md vllm_cpu_sim.envs:SETTINGS)."""
    assert readme_is_current(README, SETTINGS)


def test_unknown_additional_config_key_is_refused():
    with pytest.raises(ValueError, match=r"unknown additional_config\.cpu_sim keys.*memory"):
        SimConfig.load({"cpu_sim": {"memory": "1GiB"}})


def test_packed_linear_setting(monkeypatch):
    assert SimConfig.load().packed_linear is True
    monkeypatch.setenv("VLLM_CPU_SIM_PACKED_LINEAR", "0")
    assert SimConfig.load().packed_linear is False
    assert SimConfig.load({"cpu_sim": {"packed_linear": True}}).packed_linear is True
    monkeypatch.setenv("VLLM_CPU_SIM_PACKED_LINEAR", "maybe")
    with pytest.raises(ValueError, match="VLLM_CPU_SIM_PACKED_LINEAR='maybe' must be 1 or 0"):
        SimConfig.load()
    with pytest.raises(ValueError,
                       match=r"additional_config\.cpu_sim\.packed_linear=2 must be 1 or 0"):
        SimConfig.load({"cpu_sim": {"packed_linear": 2}})


# ---------------------------------------------------------------- selection

def test_register_follows_selection(monkeypatch):
    import vllm_cpu_sim

    monkeypatch.setenv("VLLM_CPU_SIM", "0")
    assert vllm_cpu_sim.register() is None
    monkeypatch.setenv("VLLM_CPU_SIM", "1")
    assert vllm_cpu_sim.register() == "vllm_cpu_sim.platform.CpuSimPlatform"
    monkeypatch.setenv("VLLM_CPU_SIM", "maybe")
    assert vllm_cpu_sim.register() is None
    monkeypatch.delenv("VLLM_CPU_SIM")
    monkeypatch.setattr(vllm_cpu_sim, "_accelerator_visible", lambda: True)
    assert vllm_cpu_sim.register() is None
    monkeypatch.setattr(vllm_cpu_sim, "_accelerator_visible", lambda: False)
    assert vllm_cpu_sim.register() == "vllm_cpu_sim.platform.CpuSimPlatform"


def test_unsupported_attention_features_name_the_plugin():
    with pytest.raises(NotImplementedError, match="cpu_sim attention does not support ALiBi"):
        CpuSimAttentionImpl(6, 8, 1.0, 2, alibi_slopes=[1.0] * 6)


# ---------------------------------------------------------------- custom ops

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_vllm_reference(dtype):
    from vllm.config import VllmConfig, set_current_vllm_config

    from vllm_cpu_sim.ops import CpuSimRMSNorm

    with set_current_vllm_config(VllmConfig()):
        norm = CpuSimRMSNorm(64, eps=1e-5, dtype=dtype)
    torch.manual_seed(0)
    norm.weight.data = torch.randn(64).to(dtype)
    x = torch.randn(7, 64).to(dtype)
    res = torch.randn(7, 64).to(dtype)
    x32, w32 = x.float(), norm.weight.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)
    expected = normed.to(dtype) * w32.to(dtype)
    torch.testing.assert_close(norm.forward_oot(x), expected)
    out, new_res = norm.forward_oot(x, res)
    summed = x.float() + res.float()
    torch.testing.assert_close(new_res, summed.to(dtype))
    expected = (summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    torch.testing.assert_close(out, expected * norm.weight)


def test_rms_norm_registration_replaces_vllm_layer():
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.custom_op import op_registry_oot
    from vllm.model_executor.layers.layernorm import RMSNorm

    from vllm_cpu_sim import ops

    ops.register()
    ops.register()  # a second call changes nothing
    assert op_registry_oot["RMSNorm"] is ops.CpuSimRMSNorm
    with set_current_vllm_config(VllmConfig()):
        assert type(RMSNorm(64)) is ops.CpuSimRMSNorm


def test_pass_manager_runs_without_vllm_kernels():
    """vLLM's post-grad passes fail on the empty build (their last pass looks up
    `_C` kernels); the plugin's run them all and keep the graph's result."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from vllm.compilation.passes.inductor_pass import pass_context
    from vllm.compilation.passes.pass_manager import PostGradPassManager
    from vllm.config import VllmConfig
    from vllm.config.utils import Range

    from vllm_cpu_sim.passes import CpuSimPassManager

    def step(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.silu(x @ w)
        return y.reshape(y.shape) + x

    x, w = torch.randn(4, 8), torch.randn(8, 8)
    config = VllmConfig()
    with pass_context(Range(1, 8)):
        vllm_passes = PostGradPassManager()
        vllm_passes.configure(config)
        with pytest.raises(AttributeError, match="rotary_embedding"):
            vllm_passes(make_fx(step)(x, w).graph)

        passes = CpuSimPassManager()
        passes.configure(config)
        module = make_fx(step)(x, w)
        passes(module.graph)
        module.recompile()
        torch.testing.assert_close(module(x, w), step(x, w))
        assert passes.uuid() != vllm_passes.uuid()  # part of Inductor's cache key
