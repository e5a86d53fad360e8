#!/usr/bin/env bash
# README command 1: install vLLM and vllm-cpu-sim, prepare the default model,
# and print a chat answer from it.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

step "installing vLLM, vllm-cpu-sim and the model preparation helper"
pip_install vllm==0.32.0 "$ROOT/libs/vllm-plugin-kit" "$ROOT/plugins/vllm-cpu-sim" "$ROOT/harness"

step "preparing the default model (SmolLM2-135M-Instruct) and asking it a question"
python "$ROOT/ci/demo.py" "$@"
