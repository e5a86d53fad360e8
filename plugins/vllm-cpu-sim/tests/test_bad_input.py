"""Bad settings and requests get a clear error naming what is wrong, and lose nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import make_llm
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError


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


@pytest.mark.slow
@pytest.mark.xdist_group("fp32")
def test_overlong_prompt_is_refused_and_engine_keeps_serving(llm_fp32):
    with pytest.raises(VLLMValidationError, match="maximum context length is 512"):
        llm_fp32.generate(["word " * 600], SamplingParams(max_tokens=4))
    out = llm_fp32.generate(["1, 2, 3,"], SamplingParams(temperature=0, max_tokens=4))
    assert out[0].outputs[0].text.strip().startswith("4")
