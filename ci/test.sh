#!/usr/bin/env bash
# README command 2: lint, then every plugin's tests and the conformance suite in
# its own tox environment (the plugin installed alone next to vLLM), then the
# harness's own tests and the scoreboard check. Plugins are the folders under
# plugins/, so a new backend is tested without editing this file. Name some to
# run only those: ci/test.sh cpu-sim (then the scoreboard is not checked).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
fill_wheelhouse

export VLLM_HARNESS_RESULTS=${VLLM_HARNESS_RESULTS:-$ROOT/.harness-results}
if [ "$#" -gt 0 ]; then
    envs=("$@")
else
    # verdicts of an earlier run must not stand in for this one's
    rm -rf "$VLLM_HARNESS_RESULTS"
    envs=()
    for dir in plugins/vllm-*/; do
        [ -f "$dir/pyproject.toml" ] && envs+=("$(basename "$dir" | sed 's/^vllm-//')")
    done
    envs+=(harness)
fi
envs=$(IFS=,; echo "lint,${envs[*]}")
# Every environment installs the harness and the plugin kit, and two pip builds
# of one source tree at a time collide in its build/ folder (setuptools builds
# in the tree): each is built once here, and tox.ini installs these wheels.
wheel_dir=$ROOT/.tox/.local-wheels
rm -rf "$wheel_dir"
pip wheel --quiet --no-deps --no-build-isolation -w "$wheel_dir" ./harness ./libs/vllm-plugin-kit
VLLM_HARNESS_WHEEL=$(echo "$wheel_dir"/vllm_harness-*.whl)
VLLM_PLUGIN_KIT_WHEEL=$(echo "$wheel_dir"/vllm_plugin_kit-*.whl)
export VLLM_HARNESS_WHEEL VLLM_PLUGIN_KIT_WHEEL
# Installing is one core's work (unpacking torch, vLLM and their dependencies),
# so the environments are built two at a time first; the tests then run one
# environment after another, each on both cores.
step "building the tox environments $envs, two at a time"
tox run-parallel --parallel 2 --notest -e "$envs"
step "tox -e $envs"
tox run -e "$envs"
