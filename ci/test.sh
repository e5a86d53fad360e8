#!/usr/bin/env bash
# README command 2: lint, then every plugin's tests in its own tox environment
# (the plugin installed alone next to vLLM). Plugins are the folders under
# plugins/, so a new backend is tested without editing this file; name some
# to test only those: ci/test.sh cpu-sim
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"

if [ "$#" -gt 0 ]; then
    plugins=("$@")
else
    plugins=()
    for dir in plugins/vllm-*/; do
        [ -f "$dir/pyproject.toml" ] && plugins+=("$(basename "$dir" | sed 's/^vllm-//')")
    done
fi
envs=$(IFS=,; echo "lint,${plugins[*]}")
step "tox -e $envs"
tox run -e "$envs"
