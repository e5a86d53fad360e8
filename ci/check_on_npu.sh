#!/usr/bin/env bash
# vllm-ascend's device check, in one command, on an Atlas A2 with CANN installed:
# every kernel the plugin calls against its reference, then vLLM serving the default
# model in bfloat16 through ACL graphs (plugins/vllm-ascend/tests/test_on_npu.py),
# printed as one table. Installs the pinned stack as ci/setup.sh does (torch 2.13.0 and
# vLLM 0.32.0's pure-Python wheel in .venv), torch-npu 2.13.0, and this repository's
# plugin with its native kernels built for the NPU found (SOC_VERSION overrides).
# Extra arguments go to pytest, e.g. ci/check_on_npu.sh -k attention.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"

if [ -z "${ASCEND_HOME_PATH:-}" ]; then
    for env in "${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit}/set_env.sh" \
        /usr/local/Ascend/ascend-toolkit/latest/set_env.sh /usr/local/Ascend/cann/set_env.sh; do
        if [ -f "$env" ]; then
            set +u  # CANN's script reads variables it does not set
            # shellcheck disable=SC1090
            . "$env"
            set -u
            break
        fi
    done
fi
if [ -z "${ASCEND_HOME_PATH:-}" ]; then
    echo "CANN not found: source its set_env.sh (it sets ASCEND_HOME_PATH) and run again" >&2
    exit 1
fi

# The native kernels are built for one SoC: the chip npu-smi names (e.g. Ascend910B3).
if [ -z "${SOC_VERSION:-}" ] && command -v npu-smi >/dev/null; then
    chip=$(npu-smi info -t board -i 0 -c 0 2>/dev/null \
        | awk -F: '/Chip Name/ { gsub(/[ \t]/, "", $2); print $2; exit }' || true)
    if [ -n "$chip" ]; then
        export SOC_VERSION="Ascend$chip"
    fi
fi

step "installing torch-npu 2.13.0, vLLM 0.32.0, the harness and vllm-ascend"
pip_install torch-npu==2.13.0 vllm==0.32.0 "$ROOT/libs/vllm-plugin-kit" "$ROOT/harness"
if [ -n "${SOC_VERSION:-}" ]; then
    # built in this environment: the kernels' CMake step imports the torch_npu just installed
    pip_install --no-build-isolation "$ROOT/plugins/vllm-ascend[npu,test]"
else
    echo "SOC_VERSION is not set and npu-smi names no chip: vllm-ascend without its native" \
        "kernels (their test is skipped)" >&2
    ASCEND_HOME_PATH='' pip_install "$ROOT/plugins/vllm-ascend[npu,test]"
fi

step "preparing the default model"
python -m vllm_harness.models --quiet

step "vllm-ascend on the NPU: every kernel against its reference, the default model in bfloat16"
python -m pytest "$ROOT/plugins/vllm-ascend/tests/test_on_npu.py" -p no:cacheprovider -q -rs "$@"
