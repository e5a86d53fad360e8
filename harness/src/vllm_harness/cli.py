"""``vllm-harness``: list platforms, run the suites, write the scoreboard,
run vLLM's own tests, scaffold a new backend."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vllm_harness import declaration, runner, scoreboard
from vllm_harness.features import SUITES


def _results_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("VLLM_HARNESS_RESULTS") or ".harness-results")


def _profiles(names: list[str] | None) -> list[declaration.Profile]:
    profiles = declaration.discover([n.split("/", 1)[0] for n in names] if names else None)
    if names:
        # a column, an entry point (all its profiles), or ENTRY/PROFILE (that one,
        # the default profile included)
        wanted = set(names)
        profiles = [p for p in profiles if p.column in wanted or p.entry_point in wanted
                    or f"{p.entry_point}/{p.name}" in wanted]
    if not profiles:
        raise declaration.DeclarationError("no platform plugin with a declaration is installed")
    return profiles


def _list(args: argparse.Namespace) -> int:
    for p in _profiles(args.platform):
        print(f"{p.column:<24} {p.package} {p.version}  {p.hardware}  "
              f"class {p.platform_class}  model {p.model_name}  claims {len(p.claims)}  "
              f"active by default: {p.active_by_default}")
    return 0


def _run(args: argparse.Namespace) -> int:
    suites = args.suites.split(",") if args.suites else None
    ok = runner.run(_profiles(args.platform), _results_dir(args.results), suites,
                    args.workers, args.pytest_args, vllm_tests=args.vllm_tests)
    return 0 if ok else 1


def _vllm_tests(args: argparse.Namespace) -> int:
    from vllm_harness import vllm_tests

    groups = args.groups.split(",") if args.groups else None
    ok = True
    for profile in _profiles(args.platform):
        if not profile.runs_default_model:
            print(f"{profile.column}: vLLM's tests run on the default model only; this "
                  f"profile runs {profile.model_name!r}, so they are not run here")
            continue
        ok &= vllm_tests.run(profile, _results_dir(args.results), groups)
    return 0 if ok else 1


def _scoreboard(args: argparse.Namespace) -> int:
    columns = scoreboard.collect(_results_dir(args.results))
    readme, json_path = Path(args.readme), Path(args.json)
    if args.check:
        try:
            scoreboard.check(columns, readme, json_path)
        except scoreboard.StaleError as e:
            print(e, file=sys.stderr)
            return 1
        print(f"scoreboard current: {len(columns)} platform column(s)")
    elif args.write:
        scoreboard.write(columns, readme, json_path)
        print(f"wrote the scoreboard into {readme} and {json_path}")
    else:
        print(scoreboard.markdown(columns))
    return 0


def _new(args: argparse.Namespace) -> int:
    from vllm_harness import scaffold

    return scaffold.main([args.name, "--dest", args.dest])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    results_help = "results folder (default $VLLM_HARNESS_RESULTS or ./.harness-results)"

    p = sub.add_parser("list", help="installed platform plugins and their declared profiles")
    p.add_argument("--platform", action="append", help="entry point name or NAME/PROFILE")
    p.set_defaults(func=_list)

    p = sub.add_parser("run", help="the conformance suites, one pytest session per profile")
    p.add_argument("--platform", action="append",
                   help="entry point name or NAME/PROFILE (repeatable; default: all installed)")
    p.add_argument("--suites", help=f"comma-separated subset of: {','.join(SUITES)}")
    p.add_argument("--results", help=results_help)
    p.add_argument("-n", "--workers", type=int, default=2, help="pytest-xdist workers (2)")
    p.add_argument("--vllm-tests", action="store_true",
                   help="also run vLLM's own tests (as `vllm-tests` does), beside the suites")
    p.add_argument("pytest_args", nargs="*", help="passed to pytest after --")
    p.set_defaults(func=_run)

    p = sub.add_parser("vllm-tests", help="the chosen subset of vLLM 0.32.0's own tests")
    p.add_argument("--platform", action="append", help="entry point name or NAME/PROFILE")
    p.add_argument("--groups", help="comma-separated groups (default: all)")
    p.add_argument("--results", help=results_help)
    p.set_defaults(func=_vllm_tests)

    p = sub.add_parser("scoreboard", help="feature x platform table from the results")
    p.add_argument("--results", help=results_help)
    p.add_argument("--readme", default="README.md", help="file with the scoreboard markers")
    p.add_argument("--json", default="docs/scoreboard.json", help="the JSON scoreboard")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write README section and JSON")
    mode.add_argument("--check", action="store_true", help="fail if either is stale")
    p.set_defaults(func=_scoreboard)

    p = sub.add_parser("new", help="scaffold plugins/vllm-NAME for a new backend")
    p.add_argument("name")
    p.add_argument("--dest", default="plugins", help="folder to create it in (plugins)")
    p.set_defaults(func=_new)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (declaration.DeclarationError, ValueError) as e:
        print(f"vllm-harness: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
