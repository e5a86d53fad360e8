"""Offline throughput of a vLLM platform on the default model.

The workload of docs/benchmarks.md: 32 prompts x 128 output tokens, greedy,
EOS ignored, measured on a warm engine. Prints a Markdown table together with
the command and the machine, ready to paste.

    python benchmarks/throughput.py --dtype float32 bfloat16
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / (1 << 30):.0f} GiB"
    except ImportError:
        mem = "?"
    import torch
    import vllm

    return (f"{cpu}, {cores} cores, {mem}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, vLLM {vllm.__version__}")


def prompts(n: int) -> list[str]:
    topics = ["the ocean", "a mountain village", "the history of tea", "a robot",
              "the night sky", "a library", "winter", "a bicycle journey"]
    return [f"Write a long story about {topics[i % len(topics)]} (part {i}):" for i in range(n)]


def run(model: str, dtype: str, num_prompts: int, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=model, dtype=dtype, max_model_len=1024, max_num_seqs=num_prompts)
    startup = time.perf_counter() - start
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate(prompts(num_prompts)[:4], SamplingParams(max_tokens=8))  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts(num_prompts), params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    answer = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                      SamplingParams(temperature=0, max_tokens=30), use_tqdm=False)
    llm.llm_engine.engine_core.shutdown()
    return {"dtype": dtype, "startup": startup, "elapsed": elapsed, "tokens": tokens,
            "answer": answer[0].outputs[0].text.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", help="model directory (default: the prepared default model)")
    args = parser.parse_args()

    model = args.model
    if model is None:
        from vllm_harness.models import prepare

        model = str(prepare("full"))
    rows = [run(model, d, args.num_prompts, args.max_tokens) for d in args.dtype]

    from vllm.platforms import current_platform

    print(f"\nCommand: `{shlex.join(['python', *sys.argv])}`  ")
    print(f"Platform: {type(current_platform).__name__}  ")
    print(f"Machine: {machine()}  ")
    print(f"Workload: {args.num_prompts} prompts x {args.max_tokens} output tokens, greedy, "
          "EOS ignored, warm engine\n")
    print("| dtype | output tok/s | batch time (s) | engine start (s) | chat answer |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['tokens'] / r['elapsed']:.0f} | {r['elapsed']:.1f} | "
              f"{r['startup']:.1f} | {r['answer']} |")


if __name__ == "__main__":
    main()
