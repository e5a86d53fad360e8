"""Settings tables: parsing, where a value comes from, errors that name it, the README table."""

from __future__ import annotations

import pytest
from vllm_plugin_kit.__main__ import main
from vllm_plugin_kit.settings import (
    Setting,
    SettingsTable,
    choice,
    device_settings,
    number_between,
    parse_bytes,
    parse_flag,
    read_switch,
    readme_is_current,
)
from vllm_plugin_kit.testing import check_device_settings

TABLE = SettingsTable("my_npu", [
    Setting(None, "VLLM_MY_NPU", parse_flag, None, "selects it"),
    *device_settings("VLLM_MY_NPU"),
    Setting("mode", "VLLM_MY_NPU_MODE", choice("fast", "slow"), "fast", "how"),
    Setting("wait_ms", "VLLM_MY_NPU_WAIT_MS", number_between(0, 100, "ms"), 5.0, "wait"),
])


def test_the_kits_device_settings_pass_the_shared_checks():
    check_device_settings(TABLE)


def test_a_table_that_takes_memory_differently_fails_the_shared_checks():
    def only_gib(value, where):
        text = str(value)
        if not text.endswith("GiB"):
            raise ValueError(f"{where}={value!r}: GiB only")
        return int(float(text[:-3]) * (1 << 30))

    memory, threads = device_settings("VLLM_OTHER")
    other = SettingsTable("other", [Setting("device_memory", memory.env, only_gib, 1, ""),
                                    threads])
    with pytest.raises(AssertionError, match="device_memory='512MiB' through the environment "
                       "refused"):
        check_device_settings(other)


@pytest.mark.parametrize(("text", "size"), [
    ("512MiB", 512 << 20), ("2GiB", 2 << 30), ("1.5 GiB", 3 << 29), ("1000", 1000),
    ("3gb", 3 * 1000**3), (4096, 4096), ("2g", 2 << 30),
])
def test_parse_bytes(text, size):
    assert parse_bytes(text, "X") == size


@pytest.mark.parametrize("text", ["lots", "-1GiB", "0", "12 parsecs", "", True])
def test_parse_bytes_names_the_setting(text):
    with pytest.raises(ValueError, match="MY_SETTING"):
        parse_bytes(text, "MY_SETTING")


def test_resolution_order_and_errors():
    env = {"VLLM_MY_NPU_MODE": "SLOW", "VLLM_MY_NPU_WAIT_MS": ""}
    assert TABLE.resolve(None, env)["mode"] == "slow"
    assert TABLE.resolve({"my_npu": {"mode": "fast"}}, env)["mode"] == "fast"
    assert TABLE.resolve(None, env)["wait_ms"] == 5.0  # an empty variable is unset
    with pytest.raises(ValueError, match=r"VLLM_MY_NPU_MODE='medium'; choose one of fast, slow"):
        TABLE.resolve(None, {"VLLM_MY_NPU_MODE": "medium"})
    with pytest.raises(ValueError, match=r"additional_config\.my_npu\.wait_ms=500; give a "
                       r"number from 0 to 100 \(ms\)"):
        TABLE.resolve({"my_npu": {"wait_ms": 500}}, {})
    with pytest.raises(ValueError, match=r"unknown additional_config\.my_npu keys \['memory'\]"):
        TABLE.resolve({"my_npu": {"memory": "1GiB"}}, {})
    with pytest.raises(ValueError, match=r"additional_config\.my_npu must be a mapping"):
        TABLE.resolve({"my_npu": "1GiB"}, {})
    assert TABLE.where("device_memory") == \
        "VLLM_MY_NPU_DEVICE_MEMORY or additional_config.my_npu.device_memory"
    assert TABLE.env_vars() == ["VLLM_MY_NPU", "VLLM_MY_NPU_DEVICE_MEMORY",
                                "VLLM_MY_NPU_NUM_THREADS", "VLLM_MY_NPU_MODE",
                                "VLLM_MY_NPU_WAIT_MS"]


@pytest.mark.parametrize(("text", "value"), [("1", True), ("On", True), ("no", False),
                                             (False, False)])
def test_flags(text, value):
    assert parse_flag(text, "F") is value


def test_readme_table_is_written_and_checked(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- settings:start -->\nold\n<!-- settings:end -->\n\nmore\n")
    assert not readme_is_current(readme, TABLE)
    monkeypatch.setattr("test_settings.TABLE", TABLE, raising=False)
    assert main(["readme", str(readme), "test_settings:TABLE", "--check"]) == 1
    assert main(["readme", str(readme), "test_settings:TABLE"]) == 0
    assert readme_is_current(readme, TABLE)
    text = readme.read_text()
    assert "| `VLLM_MY_NPU_MODE` | `mode` | `fast` | how |" in text
    assert text.startswith("# x\n") and text.endswith("\n\nmore\n")
    assert main(["readme", str(readme), "test_settings:TABLE", "--check"]) == 0
    assert "current" in capsys.readouterr().out


def test_switches_read_unset_on_off_and_warn_on_the_rest(caplog):
    assert read_switch("SW", "my_npu", {}) is None
    assert read_switch("SW", "my_npu", {"SW": " "}) is None
    assert read_switch("SW", "my_npu", {"SW": "yes"}) is True
    assert read_switch("SW", "my_npu", {"SW": "0"}) is False
    assert read_switch("SW", "my_npu", {"SW": "maybe"}) is False
