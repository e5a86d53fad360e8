"""``python -m vllm_harness.vllm_tests``: the subset against one platform."""

from vllm_harness.vllm_tests.runner import main

main()
