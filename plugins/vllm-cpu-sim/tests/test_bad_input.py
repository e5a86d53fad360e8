"""Bad settings of this plugin get a clear error that names the setting.

Bad requests, which every platform must refuse the same way, are judged by the
vllm-harness conformance suite."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import make_llm


def test_missing_model_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(Exception, match="no-such-model"):
        make_llm(str(missing))


def test_unsupported_dtype_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="cpu_sim does not support dtype=float16"):
        make_llm(tiny_model_dir, dtype="float16")


def test_unparsable_memory_setting_is_named(tiny_model_dir):
    with pytest.raises(ValueError, match=r"additional_config\.cpu_sim\.device_memory='lots'"):
        make_llm(tiny_model_dir, additional_config={"cpu_sim": {"device_memory": "lots"}})


@pytest.mark.slow
def test_memory_too_small_for_one_block_names_the_setting(model_dir):
    """The engine core refuses to start and its error, in the log, names the setting."""
    script = (
        "from vllm import LLM\n"
        "if __name__ == '__main__':\n"
        f"    LLM(model={model_dir!r}, max_model_len=256, enforce_eager=True)\n"
    )
    env = dict(os.environ, VLLM_CPU_SIM_DEVICE_MEMORY="300MiB")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "leaves less than one KV block" in log
    assert "raise VLLM_CPU_SIM_DEVICE_MEMORY" in log
