"""The conformance suites, one module per scoreboard section.

Each test judges one feature (``@pytest.mark.feature``); the plugin in
:mod:`vllm_harness.pytest_plugin` turns its outcome into a verdict by what the
platform claims.
"""
