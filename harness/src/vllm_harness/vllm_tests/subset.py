"""The chosen subset of vLLM's tests: which files make which scoreboard row,
and which tests are skipped because the default model breaks their premise.
The package's docstring says why each is in or out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Group:
    """One scoreboard row: pytest node ids relative to the sdist's root."""

    title: str
    tests: tuple[str, ...]


GROUPS: dict[str, Group] = {
    "vllm.sampler": Group(
        "vLLM's sampler on the platform's device (penalties, allowed tokens, bad words)",
        ("tests/v1/sample/test_sampler.py",)),
    "vllm.sampling_params": Group(
        "SamplingParams end to end: n, penalties, stop, bad words, allowed tokens, seed",
        ("tests/v1/sample/test_sampling_params_e2e.py",
         "tests/samplers/test_non_finite_params.py")),
    "vllm.llm_generate": Group(
        "LLM.generate: lists of sampling params, priorities, max_model_len, stats",
        ("tests/entrypoints/llm/test_generate.py",)),
    "vllm.llm_chat": Group(
        "LLM.chat and its chat template tokenization",
        ("tests/entrypoints/llm/test_chat.py::test_chat",
         "tests/entrypoints/llm/test_chat.py::test_llm_chat_tokenization_no_double_bos")),
    "vllm.parallel_sampling": Group(
        "n > 1 gives n distinct completions (prefix caching on, vLLM's default)",
        ("tests/v1/engine/test_llm_engine.py::test_parallel_sampling[True]",)),
}

#: Tests whose premise does not hold for the default model, skipped with the reason.
MODEL_SKIPS: dict[str, str] = {
    "tests/v1/sample/test_sampling_params_e2e.py::test_stop":
        "assumes the 6th word of the greedy text does not occur earlier in it; "
        "SmolLM2 writes \"'m a 25-year-old male with a passion\" so the stop string "
        "'a' matches at the 2nd word (stop strings: test_stop_token_ids, sampling.stop)",
}
