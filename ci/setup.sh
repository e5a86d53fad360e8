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
# The pinned stack, for this script and the tox environments it starts: never an
# unpinned torch. The wheelhouse is given on the command line (tox.ini does the
# same), which adds to pip's configured find-links instead of replacing them.
export PIP_CONSTRAINT=$ROOT/ci/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_install() { pip install --quiet --find-links "$WHEELHOUSE" "$@"; }

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

step "installing torch 2.13.0, vLLM's build tools and tox"
# a pip that resumes a dropped download and resolves the wheelhouse fill below
# in a third of the time Python 3.11's own pip 23 takes
pip_install "pip>=25.1" torch==2.13.0 setuptools-scm "setuptools<81" wheel packaging jinja2 \
    cmake ninja setuptools-rust "tox>=4.29"
python - <<'PY'
import sys, torch
if torch.version.cuda is not None:
    sys.exit(f"torch {torch.__version__} is a CUDA build; this project needs the CPU build "
             "of torch 2.13.0 (on hosts without it on local disk, add PyTorch's CPU index "
             "with PIP_EXTRA_INDEX_URL)")
PY

if ! ls "$WHEELHOUSE"/vllm-0.32.0-*.whl >/dev/null 2>&1; then
    step "building the vLLM 0.32.0 wheel once (empty build, about a minute)"
    mkdir -p "$WHEELHOUSE"
    VLLM_TARGET_DEVICE=empty VLLM_SKIP_VERSION_SUFFIX=1 \
        pip wheel --quiet --no-build-isolation --no-deps --no-binary vllm vllm==0.32.0 \
        -w "$WHEELHOUSE"
fi

# Every wheel the test environments install, fetched into the wheelhouse once.
# Each tox environment would otherwise download vLLM's dependencies again from
# the registry (triton alone, which xgrammar asks for, is 286 MB), so one run
# leaned on four clean downloads. A stamp of the pins and the projects'
# requirements skips this when nothing changed; a dropped connection is retried.
fill_wheelhouse() {
    local stamp projects=("$ROOT/harness" "$ROOT/libs/vllm-plugin-kit")
    for dir in "$ROOT"/plugins/vllm-*/; do
        [ -f "$dir/pyproject.toml" ] && projects+=("${dir%/}[test]")
    done
    stamp="$WHEELHOUSE/.deps-$(cat "$ROOT/ci/constraints.txt" "$ROOT"/harness/pyproject.toml \
        "$ROOT"/libs/*/pyproject.toml "$ROOT"/plugins/vllm-*/pyproject.toml \
        | sha256sum | cut -c1-16)"
    [ -f "$stamp" ] && return 0
    step "fetching the test environments' dependencies into $WHEELHOUSE once"
    local attempt
    for attempt in 1 2 3; do
        if pip download --quiet --resume-retries 10 --find-links "$WHEELHOUSE" -d "$WHEELHOUSE" \
            "$WHEELHOUSE"/vllm-0.32.0-*.whl "${projects[@]}" 2> >(grep -v 'is ignored' >&2); then
            touch "$stamp"
            return 0
        fi
        echo "fetching dependencies failed (attempt $attempt of 3)" >&2
        sleep $((attempt * 20))
    done
    echo "could not fetch the test environments' dependencies; see pip's message above" >&2
    return 1
}
