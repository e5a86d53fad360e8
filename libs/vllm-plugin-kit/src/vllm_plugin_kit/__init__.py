"""vllm-plugin-kit: what a vLLM platform plugin that stands its device in on the host needs once.

Settings as a table of data, the host worker over a simulated device memory,
paged attention, linear layers and the PyTorch forms of vLLM's Triton kernels
in plain PyTorch, gloo collectives, the patch for a host without accelerator,
and the list of vLLM's private names a plugin leans on (:mod:`.contract`).
No platform here: each plugin subclasses or calls these and keeps what is its
own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

__version__ = "0.1.0"


def get_logger(name: str) -> logging.Logger:
    """A logger inside vLLM's ``vllm`` hierarchy, so vLLM's handlers and
    ``VLLM_LOGGING_LEVEL`` apply to a plugin's messages too."""
    from vllm.logger import init_logger

    return init_logger(name if name == "vllm" or name.startswith("vllm.") else f"vllm.{name}")
