"""vLLM's own tests, run against one platform with the default model.

The conformance suites judge a platform by the harness's own checks; this mode
adds a second opinion: a subset of vLLM 0.32.0's test suite, taken from its
sdist (the wheel ships no tests), run in a subprocess whose environment
selects the platform (:meth:`Profile.process_env`), with every model the tests
name replaced by the default model (SmolLM2-135M-Instruct, a Llama), since no
model hub is reachable. Each group below is one scoreboard row ``vllm.<group>``.

The subset (see :data:`GROUPS`) keeps tests that drive the platform through
vLLM's engine, sampler and ``LLM`` API, are not tied to one model's weights,
and together take about three minutes on two cores (an engine start costs
~15 s there, so tests that build one engine each are picked sparingly):

- ``vllm.sampler``: ``tests/v1/sample/test_sampler.py``, vLLM's sampler
  (penalties, allowed tokens, bad words) on the platform's device; no engine.
- ``vllm.sampling_params``: ``tests/v1/sample/test_sampling_params_e2e.py``
  (n, penalties, stop strings and ids, detokenize, bad words, allowed tokens,
  seeds on one engine) and ``tests/samplers/test_non_finite_params.py``.
- ``vllm.llm_generate``: ``tests/entrypoints/llm/test_generate.py`` (lists of
  sampling params, priorities, ``max_model_len``, stats).
- ``vllm.llm_chat``: ``tests/entrypoints/llm/test_chat.py``: ``LLM.chat`` and
  its single BOS (SmolLM2's chat template opens with its BOS token).
- ``vllm.parallel_sampling``: ``test_parallel_sampling[True]`` of
  ``tests/v1/engine/test_llm_engine.py``: ``n`` up to 20, distinct completions.

One chosen test whose premise fails for SmolLM2's text is skipped with the
reason (:data:`MODEL_SKIPS`).

Left out: ``samplers/test_logprobs.py``, ``v1/sample/test_logprobs.py`` and
``test_logprobs_e2e.py`` (compare against a 1B model's HF run or lm-eval),
``samplers/test_ignore_eos.py`` (512 tokens in half precision: minutes here),
``samplers/test_beam_search.py`` (HF reference runs), ``samplers/test_no_bad_words.py``
(hard-codes GPT-2 token layouts), ``v1/sample/test_topk_topp_sampler.py``
(CUDA, Triton and FlashInfer kernels), ``test_engine_metrics`` (speculative
decoding, 800 tokens), ``test_chat_extra_kwargs`` (a Qwen3 thinking template),
``test_prompt_validation.py`` (two engines for what ``robustness.*`` checks;
its third test needs LLaVA), ``test_parallel_sampling[False]`` (30 s more for
the same path without prefix caching), ``v1/engine/test_async_llm.py`` and
``test_engine_core*.py`` (minutes of engines, GPU memory checks), and
``basic_correctness/`` (HF comparisons of several hub models, CUDA memory).

vLLM's ``tests/conftest.py`` imports half the test dependencies (tblib, HF
runners, media assets), so it is not loaded (``--noconftest``); the package's
pytest plugin (``-p vllm_harness.vllm_tests.plugin``) provides the two
fixtures the subset uses (``vllm_runner``, ``example_prompts``), swaps models,
fills in the profile's engine settings and records each test's outcome.

The package, by job: :mod:`.subset` (the groups and skips above),
:mod:`.sdist` (getting the sdist and extracting its tests), :mod:`.runner`
(running the groups and judging them) and :mod:`.plugin` (the ``-p`` plugin,
loaded only into the tests' subprocess). ``python -m vllm_harness.vllm_tests``
runs them (:func:`main`).
"""

from __future__ import annotations

from vllm_harness.vllm_tests.plugin import (
    GPU_SIZED,
    VllmRunner,
    engine_kwargs,
    substitute,
    vllm_frame,
)
from vllm_harness.vllm_tests.runner import (
    GROUP_TIMEOUT,
    GroupRun,
    Outcome,
    group_cell,
    group_of,
    main,
    merge_phases,
    outcomes_of,
    profile_defaults,
    read_outcomes,
    read_records,
    results_path,
    run,
    run_groups,
    split_runs,
)
from vllm_harness.vllm_tests.sdist import (
    EXTRACT_RECIPE,
    SDIST,
    VLLM_VERSION,
    find_sdist_url,
    index_urls,
    sdist_path,
    tests_root,
)
from vllm_harness.vllm_tests.subset import GROUPS, MODEL_SKIPS, Group

__all__ = [
    "EXTRACT_RECIPE",
    "GPU_SIZED",
    "GROUPS",
    "GROUP_TIMEOUT",
    "MODEL_SKIPS",
    "SDIST",
    "VLLM_VERSION",
    "Group",
    "GroupRun",
    "Outcome",
    "VllmRunner",
    "engine_kwargs",
    "find_sdist_url",
    "group_cell",
    "group_of",
    "index_urls",
    "main",
    "merge_phases",
    "outcomes_of",
    "profile_defaults",
    "read_outcomes",
    "read_records",
    "results_path",
    "run",
    "run_groups",
    "sdist_path",
    "split_runs",
    "substitute",
    "tests_root",
    "vllm_frame",
]
