"""Checks every plugin runs on its own settings table, so that all of them accept
and refuse the same memory and thread settings the same way.

``check_device_settings(table)`` gives each value below to the table through
the environment and through ``additional_config``, and raises AssertionError
naming the first case a plugin treats differently.
"""

from __future__ import annotations

from vllm_plugin_kit.settings import SettingsTable

GiB = 1 << 30
MiB = 1 << 20

#: (as written, bytes)
MEMORY_ACCEPTED = (
    ("2GiB", 2 * GiB), ("1.5GiB", 3 * GiB // 2), ("512MiB", 512 * MiB), ("4GB", 4 * 10**9),
    ("2g", 2 * GiB), (" 768 mib ", 768 * MiB), ("1073741824", GiB),
)
MEMORY_REFUSED = ("lots", "-1GiB", "0", "12 parsecs", "GiB", "1.5.2GiB")
#: (as written, threads)
THREADS_ACCEPTED = (("1", 1), ("4", 4), (" 2 ", 2))
THREADS_REFUSED = ("0", "-2", "two", "1.5", "true")


def _cases(table: SettingsTable, key: str, accepted, refused) -> list[str]:
    setting = next(s for s in table if s.key == key)
    wrong = []
    for text, expected in accepted:
        for where, config, environ in (
            ("environment", None, {setting.env: text}),
            ("additional_config", {table.section: {key: text}}, {}),
        ):
            try:
                got = table.resolve(config, environ)[key]
            except ValueError as error:
                wrong.append(f"{key}={text!r} through the {where} refused: {error}")
                continue
            if got != expected:
                wrong.append(f"{key}={text!r} through the {where} gave {got}, not {expected}")
    for text in refused:
        for where, config, environ, name in (
            ("environment", None, {setting.env: text}, setting.env),
            ("additional_config", {table.section: {key: text}}, {},
             f"additional_config.{table.section}.{key}"),
        ):
            try:
                got = table.resolve(config, environ)[key]
            except ValueError as error:
                if name not in str(error):
                    wrong.append(f"{key}={text!r} through the {where} refused without "
                                 f"naming {name}: {error}")
                continue
            wrong.append(f"{key}={text!r} through the {where} accepted as {got}")
    return wrong


def check_device_settings(table: SettingsTable) -> None:
    """The table's ``device_memory`` and ``num_threads`` take and refuse what the
    kit's do, from either place, and ``additional_config`` wins over the environment."""
    wrong = _cases(table, "device_memory", MEMORY_ACCEPTED, MEMORY_REFUSED)
    wrong += _cases(table, "num_threads", THREADS_ACCEPTED, THREADS_REFUSED)
    memory = next(s for s in table if s.key == "device_memory")
    both = table.resolve({table.section: {"device_memory": "1GiB"}}, {memory.env: "3GiB"})
    if both["device_memory"] != GiB:
        wrong.append("additional_config does not win over the environment")
    defaults = table.resolve({}, {})
    if defaults["num_threads"] is not None:
        wrong.append(f"num_threads has a fixed default {defaults['num_threads']}")
    assert not wrong, f"{table.section}:\n  " + "\n  ".join(wrong)
