"""A new backend's plugin folder, rendered from the copier template in ``template/``.

``python -m vllm_harness.scaffold NAME`` creates ``plugins/vllm-NAME``: a platform
plugin that runs on the CPU as generated and passes the harness's registration,
correctness and server suites, with comments saying where the device's code goes.
tox, ``ci/test.sh`` and the CI matrix find the folder by its name, with no edit.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

TEMPLATE = Path(__file__).parent / "template"
NAME_RE = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
#: Longest name the template's lines fit in ruff's line length with.
MAX_NAME = 20
#: tox.ini's own environments: `tox -e NAME` must reach the plugin, not these.
RESERVED = frozenset({"lint", "demo", "harness"})


class ScaffoldError(ValueError):
    """A name or destination the scaffold refuses, with the reason."""


def check_name(name: str) -> None:
    """Refuse names that would not make a valid package, entry point and tox env."""
    if not NAME_RE.fullmatch(name):
        raise ScaffoldError(
            f"backend name {name!r}: use lowercase letters, digits and single dashes, "
            "starting with a letter (e.g. 'my-npu'); it names the folder vllm-NAME, "
            "the package vllm_NAME and the tox environment NAME"
        )
    if len(name) > MAX_NAME:
        raise ScaffoldError(f"backend name {name!r} is longer than {MAX_NAME} characters "
                           "(the generated code keeps within the line length)")
    if name in RESERVED:
        raise ScaffoldError(
            f"backend name {name!r} is a tox environment of this repository already "
            f"({', '.join(sorted(RESERVED))}); choose another"
        )


def create(name: str, dest: Path, *, overwrite: bool = False) -> Path:
    """Render the template into ``dest / f"vllm-{name}"`` and return that folder.

    No prompts and no git: copier renders the local template with ``name`` as
    its only answer. An existing folder is refused unless ``overwrite``, in
    which case the template's files replace their namesakes and any other
    file in the folder is kept.
    """
    import copier

    check_name(name)
    target = Path(dest) / f"vllm-{name}"
    if target.exists() and not overwrite:
        raise ScaffoldError(
            f"{target} exists already; choose another name or pass overwrite=True "
            "(--overwrite) to render the template over it"
        )
    copier.run_copy(
        str(TEMPLATE),
        str(target),
        data={"name": name},
        defaults=True,
        overwrite=overwrite,
        quiet=True,
    )
    write_settings_table(target, f"vllm_{name.replace('-', '_')}")
    return target


def write_settings_table(target: Path, package: str) -> None:
    """Fill the README's settings table from the generated ``envs.SETTINGS``, as
    vllm-plugin-kit renders it (the generated tests check the two agree)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": os.pathsep.join(
        [str(target / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run(
        [sys.executable, "-m", "vllm_plugin_kit", "readme", str(target / "README.md"),
         f"{package}.envs:SETTINGS"], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise ScaffoldError(f"could not write the README's settings table (is vllm-plugin-kit "
                            f"installed?): {result.stderr.strip()[-1000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_harness.scaffold",
        description="Create plugins/vllm-NAME, a new vLLM platform plugin that runs on the "
        "CPU until its device code is filled in.",
    )
    parser.add_argument("name", help="backend name: lowercase letters, digits and dashes")
    parser.add_argument("--dest", type=Path, default=Path("plugins"),
                        help="folder to create vllm-NAME in (default: ./plugins)")
    parser.add_argument("--overwrite", action="store_true",
                        help="render over an existing folder")
    args = parser.parse_args(argv)
    try:
        target = create(args.name, args.dest, overwrite=args.overwrite)
    except ScaffoldError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ident = args.name.replace("-", "_")
    print(f"created {target}\n\nnext steps:")
    print(f"  pip install -c ci/constraints.txt --no-build-isolation ./libs/vllm-plugin-kit "
          f"-e '{target}[test]'")
    print(f"  VLLM_PLUGINS={ident} python -c "
          "\"from vllm.platforms import current_platform; print(current_platform)\"")
    print(f"  tox -e {args.name}          # its own tests, then the harness's suites on it")
    print(f"  python -m vllm_harness run --platform {ident} "
          "--suites registration,correctness,server --results results")
    print(f"then replace the CPU stand-ins in {target}/src/vllm_{ident}/ with your "
          "device's code (each module says where)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
