#!/usr/bin/env bash
# Shared by demo.sh and test.sh: a virtual environment with torch and tox, and
# vLLM 0.32.0 built once as a pure-Python ("empty") wheel into a wheelhouse
# that every later environment installs from. Source it from the repository root.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
export VLLM_PLUGINS_CACHE=${VLLM_PLUGINS_CACHE:-$HOME/.cache/vllm-plugins}
WHEELHOUSE=$VLLM_PLUGINS_CACHE/wheels
VENV=${VENV:-$ROOT/.venv}
# Pins that override any machine-wide pip constraint: never an unpinned torch.
export PIP_CONSTRAINT=$ROOT/ci/constraints.txt
export PIP_FIND_LINKS=$WHEELHOUSE
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

step "installing torch 2.13.0, vLLM's build tools and tox"
pip install --quiet torch==2.13.0 setuptools-scm "setuptools<81" wheel packaging jinja2 \
    cmake ninja setuptools-rust "tox>=4.20"

if ! ls "$WHEELHOUSE"/vllm-0.32.0-*.whl >/dev/null 2>&1; then
    step "building the vLLM 0.32.0 wheel once (empty build, about a minute)"
    mkdir -p "$WHEELHOUSE"
    VLLM_TARGET_DEVICE=empty VLLM_SKIP_VERSION_SUFFIX=1 \
        pip wheel --quiet --no-build-isolation --no-deps --no-binary vllm vllm==0.32.0 \
        -w "$WHEELHOUSE"
fi
