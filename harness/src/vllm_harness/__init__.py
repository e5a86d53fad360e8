"""Shared test support for this repository's vLLM platform plugins."""
