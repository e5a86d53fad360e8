"""tox plugin of this repository: one environment per folder under plugins/.

tox only runs environments it knows; this hook names one for every
``plugins/vllm-NAME`` with a pyproject, so a new backend gets ``tox -e NAME``
(from the generic ``[testenv]`` of tox.ini) with no edit anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tox.plugin import impl


@impl
def tox_extend_envs() -> Iterable[str]:
    plugins = Path(__file__).parent / "plugins"
    found = plugins.glob("vllm-*/pyproject.toml")
    return sorted(p.parent.name.removeprefix("vllm-") for p in found)
