"""``python -m vllm_plugin_kit readme README.md PACKAGE.MODULE:TABLE [--check]``:
write (or check) a plugin README's settings table from its settings."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from vllm_plugin_kit.settings import SettingsTable, readme_is_current, write_readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vllm_plugin_kit")
    commands = parser.add_subparsers(dest="command", required=True)
    readme = commands.add_parser("readme", help="the settings table between the README's "
                                 "<!-- settings:start --> and <!-- settings:end --> markers")
    readme.add_argument("path", type=Path)
    readme.add_argument("table", help="where the SettingsTable is, as module:attribute")
    readme.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args(argv)
    module, _, attr = args.table.partition(":")
    table = getattr(importlib.import_module(module), attr or "SETTINGS")
    if not isinstance(table, SettingsTable):
        parser.error(f"{args.table} is not a SettingsTable")
    if args.check:
        current = readme_is_current(args.path, table)
        print(f"{args.path}: settings table {'current' if current else 'stale'}")
        return 0 if current else 1
    changed = write_readme(args.path, table)
    print(f"{args.path}: settings table {'written' if changed else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
